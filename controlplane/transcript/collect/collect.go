// Package collect reads a session's transcript out of the events chain and
// signs it. It only reads: a transcript is a view of the chain, never a
// record of its own.
package collect

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/transcript"
)

// Bounds of one transcript: the entries of its span (its own and others')
// and the canonical bytes of its own, each written twice (base64 and
// JSON), so that it stays under transcript.MaxBytes.
const (
	MaxSpan     = 100_000
	MaxOwnBytes = 16 << 20
)

var (
	// ErrNotFound is a session that does not exist.
	ErrNotFound = errors.New("transcript: no such session")
	// ErrTooLarge is a session whose span is past the bounds.
	ErrTooLarge = errors.New("transcript: the session's span is too large for one transcript")
)

// DB is what collect needs of the database.
type DB interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Session returns the signed transcript of the session id (a canonical
// UUID). tenantID, when not empty, must be the session's tenant, or the
// session is not found: a tenant cannot learn another's sessions exist.
func Session(ctx context.Context, db DB, id, tenantID string, key ed25519.PrivateKey) (*transcript.Transcript, error) {
	var t *transcript.Transcript
	// One snapshot: the chain read is a prefix of it, so every seq of the
	// span is there (writers commit in chain order, under the chain lock).
	err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		t, err = read(ctx, tx, id, tenantID)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := transcript.Sign(t, key); err != nil {
		return nil, err
	}
	return t, nil
}

func read(ctx context.Context, tx pgx.Tx, id, tenantID string) (*transcript.Transcript, error) {
	t := &transcript.Transcript{Format: transcript.Format, Entries: []transcript.Entry{}}
	var created time.Time
	var ended *time.Time
	var reason *string
	err := tx.QueryRow(ctx, `SELECT id::text, tenant_id::text, agent_id::text, created_at, ended_at, end_reason
		FROM support_sessions WHERE id = $1 AND ($2 = '' OR tenant_id::text = $2)`, id, tenantID).
		Scan(&t.Session.ID, &t.Session.TenantID, &t.Session.AgentID, &created, &ended, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("transcript: session: %w", err)
	}
	t.Session.CreatedAt = stamp(created)
	if ended != nil {
		t.Session.EndedAt = stamp(*ended)
	}
	if reason != nil {
		t.Session.EndReason = *reason
	}
	t.GeneratedAt = stamp(time.Now())

	// The span's ends come from audit_log's index on session_id; which
	// events in it are the session's comes from each event's own hashed
	// bytes, below.
	var first, last *int64
	if err := tx.QueryRow(ctx, `SELECT min(e.seq), max(e.seq) FROM audit_log a JOIN events e ON e.id = a.id
		WHERE a.session_id = $1`, id).Scan(&first, &last); err != nil {
		return nil, fmt.Errorf("transcript: span: %w", err)
	}
	if first == nil {
		return t, nil
	}
	if *last-*first+1 > MaxSpan {
		return nil, fmt.Errorf("%w: %d events (at most %d)", ErrTooLarge, *last-*first+1, MaxSpan)
	}
	// Only the session's own events travel with their bytes: the others
	// are picked out by their jsonb payload (parsed from the same bytes
	// on insert), and each own one is checked again on its bytes below.
	rows, err := tx.Query(ctx, `SELECT seq, prev_hash, hash, own, CASE WHEN own THEN canonical END,
			CASE WHEN own AND canonical IS NULL THEN payload::text END
		FROM (SELECT seq, prev_hash, hash, canonical, payload, lower(payload->>'session_id') IS NOT DISTINCT FROM $3 AS own
			FROM events WHERE seq BETWEEN $1 AND $2) e
		ORDER BY seq`, *first, *last, id)
	if err != nil {
		return nil, fmt.Errorf("transcript: events: %w", err)
	}
	defer rows.Close()
	size := 0
	for rows.Next() {
		var (
			seq            int64
			prevHash, hash []byte
			mine           bool
			canon          []byte
			payload        *string
		)
		if err := rows.Scan(&seq, &prevHash, &hash, &mine, &canon, &payload); err != nil {
			return nil, fmt.Errorf("transcript: events: %w", err)
		}
		e := transcript.Entry{Seq: seq, PrevHash: hex.EncodeToString(prevHash), Hash: hex.EncodeToString(hash)}
		if mine && canon == nil && payload != nil {
			// Written before events kept their bytes: the hash covers
			// the payload's canonical form (see audit.Canonical).
			if canon, err = audit.Canonical(json.RawMessage(*payload)); err != nil {
				return nil, fmt.Errorf("transcript: event %d: %w", seq, err)
			}
		}
		if mine && belongs(canon, id) {
			if size += len(canon); size > MaxOwnBytes {
				return nil, fmt.Errorf("%w: its actions hold over %d MiB", ErrTooLarge, MaxOwnBytes>>20)
			}
			e.Canonical = base64.StdEncoding.EncodeToString(canon)
			e.Event = json.RawMessage(canon)
			t.Actions++
		}
		t.Entries = append(t.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("transcript: events: %w", err)
	}
	if len(t.Entries) > 0 {
		t.FirstSeq, t.LastSeq = t.Entries[0].Seq, t.Entries[len(t.Entries)-1].Seq
	}
	return t, nil
}

// belongs says whether an event's bytes name the session.
func belongs(canon []byte, id string) bool {
	var ev struct {
		SessionID string `json:"session_id"`
	}
	return json.Unmarshal(canon, &ev) == nil && strings.EqualFold(ev.SessionID, id)
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
