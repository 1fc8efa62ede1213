package signing

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/topics"
)

// KeyID is the stable name of a control-plane public key: the hex of the
// first 16 bytes of its SHA-256. A signature can name the key that made it.
func KeyID(pub ed25519.PublicKey) string { return topics.KeyID(pub) }

// Key is one control-plane signing key as the shared record (PostgreSQL)
// holds it. The private half is never in the database: it is the 0600 file
// File, in the directory of the configured command-signing-key.
type Key struct {
	Seq       int
	ID        string
	Public    ed25519.PublicKey
	File      string
	CreatedAt time.Time
	RetiredAt *time.Time
	// Link is the signed key change that introduced the key (nil for the
	// first); Retirement the signed retirement, once retired.
	Link, Retirement []byte
}

// Errors a rotation or retirement refuses with.
var (
	ErrNothingToRetire = errors.New("no key to retire: every key but the current one is already retired")
	ErrTooManyKeys     = fmt.Errorf("the key chain holds %d keys, its limit", topics.MaxKeys)
	ErrKeyFile         = errors.New("private key file does not match the key set")
)

// lockKey serialises changes to the key set across nodes ("argussig").
const lockKey int64 = 0x6172677573_736967

// Querier is what reading the key set needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Keys returns the key set, oldest first.
func Keys(ctx context.Context, q Querier) ([]Key, error) {
	rows, err := q.Query(ctx, `SELECT seq, key_id, public_key, file, created_at, retired_at, link, retirement
		FROM signing_keys ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var k Key
		var pub []byte
		err := r.Scan(&k.Seq, &k.ID, &pub, &k.File, &k.CreatedAt, &k.RetiredAt, &k.Link, &k.Retirement)
		k.Public = ed25519.PublicKey(pub)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	return keys, nil
}

// Bootstrap makes sure the key set exists: when the database holds none,
// the key at path (created if missing) becomes its first, the key agents
// enrolled with. It returns the key set.
func Bootstrap(ctx context.Context, pool *pgxpool.Pool, path string) ([]Key, error) {
	if keys, err := Keys(ctx, pool); err != nil || len(keys) > 0 {
		return keys, err
	}
	priv, err := LoadOrCreate(path)
	if err != nil {
		return nil, err
	}
	pub := priv.Public().(ed25519.PublicKey)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO signing_keys (seq, key_id, public_key, file)
			SELECT 0, $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys)`, KeyID(pub), []byte(pub), filepath.Base(path))
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		_, err = audit.Record(ctx, tx, audit.Entry{Actor: "system", Action: "signing_key.adopt", Outcome: audit.Success,
			Detail: map[string]any{"key_id": KeyID(pub), "seq": 0}})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	return Keys(ctx, pool)
}

// Current returns the newest key of a key set.
func Current(keys []Key) (Key, bool) {
	if len(keys) == 0 {
		return Key{}, false
	}
	return keys[len(keys)-1], true
}

// Private loads k's private half from dir and checks it is k's.
func (k Key) Private(dir string) (ed25519.PrivateKey, error) {
	priv, err := load(filepath.Join(dir, k.File))
	if err != nil {
		return nil, err
	}
	if !priv.Public().(ed25519.PublicKey).Equal(k.Public) {
		return nil, fmt.Errorf("%w: %s is not key %s", ErrKeyFile, filepath.Join(dir, k.File), k.ID)
	}
	return priv, nil
}

// Rotate makes a new key, writes its private half (0600) into dir, and
// records it with the key change signed by the current key, audited
// (actor) in the same transaction. Running servers notice it and sign
// with it from then on.
func Rotate(ctx context.Context, pool *pgxpool.Pool, dir string, actor audit.Entry) (Key, error) {
	var made Key
	var file string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey); err != nil {
			return err
		}
		keys, err := Keys(ctx, tx)
		if err != nil {
			return err
		}
		cur, ok := Current(keys)
		if !ok {
			return errors.New("no signing key recorded yet")
		}
		if len(keys) >= topics.MaxKeys {
			return ErrTooManyKeys
		}
		priv, err := cur.Private(dir)
		if err != nil {
			return err
		}
		pub, next, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		id := KeyID(pub)
		made = Key{Seq: cur.Seq + 1, ID: id, Public: pub, File: "command-signing-" + id + ".key"}
		link := topics.KeyLink{V: topics.Version, Seq: made.Seq, KeyID: id, PublicKey: topics.EncodePublicKey(pub),
			PrevKeyID: cur.ID, IssuedAt: time.Now().UTC().Format(time.RFC3339Nano)}
		if made.Link, err = topics.Sign(priv, topics.PurposeKeyChange, link); err != nil {
			return err
		}
		file = filepath.Join(dir, made.File)
		if err := writeKey(file, next); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO signing_keys (seq, key_id, public_key, file, link)
			VALUES ($1, $2, $3, $4, $5) RETURNING created_at`, made.Seq, id, []byte(pub), made.File, made.Link).Scan(&made.CreatedAt); err != nil {
			return err
		}
		e := actor
		e.Action, e.Outcome = "signing_key.rotate", audit.Success
		e.Detail = withDetail(actor.Detail, map[string]any{"key_id": id, "prev_key_id": cur.ID, "seq": made.Seq})
		_, err = audit.Record(ctx, tx, e)
		return err
	})
	if err != nil {
		if file != "" {
			_ = os.Remove(file) // the key was never recorded: nothing may use it
		}
		refusal(ctx, pool, actor, "signing_key.rotate", err)
		return Key{}, fmt.Errorf("rotate: %w", err)
	}
	return made, nil
}

// Retire retires every key but the current one, each with a retirement
// signed by the current key, audited (actor) in the same transaction, and
// then deletes their private files from dir: nothing signs with them again.
func Retire(ctx context.Context, pool *pgxpool.Pool, dir string, actor audit.Entry) ([]Key, error) {
	var retired []Key
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		retired = nil
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey); err != nil {
			return err
		}
		keys, err := Keys(ctx, tx)
		if err != nil {
			return err
		}
		cur, ok := Current(keys)
		if !ok {
			return errors.New("no signing key recorded yet")
		}
		priv, err := cur.Private(dir)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		for _, k := range keys[:len(keys)-1] {
			if k.RetiredAt != nil {
				continue
			}
			r := topics.KeyRetirement{V: topics.Version, KeyID: k.ID, ByKeyID: cur.ID, RetiredAt: now.Format(time.RFC3339Nano)}
			if k.Retirement, err = topics.Sign(priv, topics.PurposeKeyRetire, r); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, `UPDATE signing_keys SET retired_at = now(), retirement = $2 WHERE seq = $1 RETURNING retired_at`,
				k.Seq, k.Retirement).Scan(&k.RetiredAt); err != nil {
				return err
			}
			e := actor
			e.Action, e.Outcome = "signing_key.retire", audit.Success
			e.Detail = withDetail(actor.Detail, map[string]any{"key_id": k.ID, "by_key_id": cur.ID, "seq": k.Seq})
			if _, err := audit.Record(ctx, tx, e); err != nil {
				return err
			}
			retired = append(retired, k)
		}
		if len(retired) == 0 {
			return ErrNothingToRetire
		}
		return nil
	})
	if err != nil {
		refusal(ctx, pool, actor, "signing_key.retire", err)
		return nil, fmt.Errorf("retire: %w", err)
	}
	for _, k := range retired {
		if err := os.Remove(filepath.Join(dir, k.File)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return retired, fmt.Errorf("retired, but its private key file stays: %w", err)
		}
	}
	return retired, nil
}

// refusal audits a rotation or retirement that did not happen.
func refusal(ctx context.Context, pool *pgxpool.Pool, actor audit.Entry, action string, cause error) {
	e := actor
	e.Action, e.Outcome, e.Reason = action, audit.Failure, cause.Error()
	if errors.Is(cause, ErrNothingToRetire) || errors.Is(cause, ErrTooManyKeys) {
		e.Outcome = audit.Denied
	}
	_ = audit.Write(context.WithoutCancel(ctx), pool, e)
}

func withDetail(base, add map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(add))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range add {
		out[k] = v
	}
	return out
}

// writeKey writes priv as a PKCS#8 PEM file, 0600, refusing to overwrite,
// synced before it is recorded anywhere.
func writeKey(path string, priv ed25519.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
	}
	return err
}
