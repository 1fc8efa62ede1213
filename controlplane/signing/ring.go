package signing

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/topics"
)

// Ring is a server's live view of the key set: the key it signs with now,
// and the chain it hands agents. Refresh reloads it from the database, so
// a rotation made by `argus-server signing-key rotate` (on any node)
// takes effect without a restart.
type Ring struct {
	pool *pgxpool.Pool
	dir  string
	log  *slog.Logger
	st   atomic.Pointer[ringState]
	// onUsable is told when the node starts or stops holding a live key.
	onUsable atomic.Pointer[func(usable bool)]
}

// OnUsable sets f to be told, from the refresh that finds it, each time
// the node comes to hold no live key's private half (false) or holds one
// again (true): a node that signs nothing agents accept should not keep
// them.
func (r *Ring) OnUsable(f func(usable bool)) { r.onUsable.Store(&f) }

type ringState struct {
	keys []Key
	priv ed25519.PrivateKey
	id   string
	// unusable is why this node signs nothing agents accept: it holds
	// the private half of no live key. priv is then a key of its own that
	// no agent trusts, so nothing signed here can pass for the control
	// plane, and a caller that did not ask Usable still cannot panic.
	unusable error
	// chain is the encoded KeyChainMsg; nil while there has never been a
	// key change (nothing to tell agents).
	chain []byte
	// newest and oldest are the trusted keys an agent that followed the
	// whole chain holds.
	newest, oldest string
}

// ErrNoLiveKey is a node's key directory holding no live key's private
// half: the set was rotated and the old keys retired elsewhere, and the
// new key's file was never copied here.
var ErrNoLiveKey = errors.New("this node holds the private half of no live signing key")

// OpenRing loads the key set, recording the key at path (the configured
// command-signing-key, created if missing) as its first when the database
// holds none. Private key files are read from path's directory. A node
// that holds no live key's file does not start: it would sign nothing an
// agent accepts.
func OpenRing(ctx context.Context, pool *pgxpool.Pool, path string, log *slog.Logger) (*Ring, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	keys, err := Bootstrap(ctx, pool, path)
	if err != nil {
		return nil, err
	}
	r := &Ring{pool: pool, dir: filepath.Dir(path), log: log}
	st, err := r.build(keys)
	if err != nil {
		return nil, err
	}
	if st.unusable != nil {
		return nil, fmt.Errorf("signing keys: %w", st.unusable)
	}
	r.say(nil, st)
	r.st.Store(st)
	return r, nil
}

func (r *Ring) build(keys []Key) (*ringState, error) {
	st := &ringState{keys: keys}
	// The newest live key whose private half this node holds signs. A
	// node that lacks the newest file (it was rotated on another machine
	// and not yet copied here) keeps signing with the one before, which
	// agents accept until it is retired, and says so. One that holds no
	// live key's file signs nothing they accept, and says so (Usable).
	var missing []string
	for i := len(keys) - 1; i >= 0 && st.priv == nil; i-- {
		if keys[i].RetiredAt != nil {
			break
		}
		priv, err := keys[i].Private(r.dir)
		if err != nil {
			missing = append(missing, keys[i].File)
			continue
		}
		st.priv, st.id = priv, keys[i].ID
	}
	if st.priv == nil {
		file := ""
		if len(missing) > 0 {
			file = missing[0]
		}
		st.unusable = fmt.Errorf("%w: copy %s from the node where it was rotated into %s", ErrNoLiveKey, file, r.dir)
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		st.priv = priv
	}
	msg := topics.KeyChainMsg{V: topics.Version, Kind: topics.KindKeyChain, Links: []json.RawMessage{}}
	for _, k := range keys {
		if k.Link != nil {
			msg.Links = append(msg.Links, k.Link)
		}
		if k.Retirement != nil {
			msg.Retirements = append(msg.Retirements, k.Retirement)
		}
		if k.RetiredAt == nil && st.oldest == "" {
			st.oldest = k.ID
		}
	}
	st.newest = keys[len(keys)-1].ID
	if len(msg.Links) > 0 || len(msg.Retirements) > 0 {
		b, err := json.Marshal(msg)
		if err != nil {
			return nil, err
		}
		if len(b) > topics.MaxKeyChain {
			return nil, fmt.Errorf("signing keys: the key chain is %d bytes, over its %d-byte bound", len(b), topics.MaxKeyChain)
		}
		st.chain = b
	}
	return st, nil
}

// say logs what changed in how this node signs, once per change.
func (r *Ring) say(old, st *ringState) {
	switch {
	case st.unusable != nil && (old == nil || old.unusable == nil):
		r.log.Error("signing key missing: this node signs nothing and is not ready", "newest", st.newest, "err", st.unusable)
	case st.unusable == nil && st.id != st.newest && (old == nil || old.id != st.id || old.newest != st.newest):
		r.log.Error("signing with an older key: copy the newest key's file to this node", "signing_with", st.id, "newest", st.newest, "dir", r.dir)
	case st.unusable == nil && old != nil && old.unusable != nil:
		r.log.Info("signing key found: this node signs again", "signing_with", st.id)
	case st.unusable == nil && old != nil && old.newest == st.newest && old.id != st.id && st.id == st.newest:
		// Caught up: the newest key's file was copied in.
		r.log.Info("signing with the newest key", "signing_with", st.id)
	}
}

// Refresh reloads the key set and reports whether it changed (a key
// added or retired).
func (r *Ring) Refresh(ctx context.Context) (bool, error) { return r.refresh(ctx, nil) }

// refresh is Refresh that, when the set changed, runs publish with the new
// chain in place while the previous key still signs, and only then signs
// with the new key: a command signed with the new key is published after
// the chain that introduces it, on the same connection, so an agent
// connected here always has the key first. While this node does not sign
// with the newest key, the key directory is looked at again each time, so
// a file copied in is used without a restart.
func (r *Ring) refresh(ctx context.Context, publish func()) (bool, error) {
	keys, err := Keys(ctx, r.pool)
	if err != nil {
		return false, err
	}
	old := r.st.Load()
	same := sameKeys(old.keys, keys)
	if same && old.unusable == nil && old.id == old.newest {
		return false, nil
	}
	st, err := r.build(keys)
	if err != nil {
		return false, err
	}
	if same && st.id == old.id && (st.unusable == nil) == (old.unusable == nil) {
		return false, nil // still behind: nothing new to say
	}
	if publish != nil && !same {
		interim := *st
		interim.priv, interim.id, interim.unusable = old.priv, old.id, old.unusable
		r.st.Store(&interim)
		publish()
	}
	r.st.Store(st)
	r.say(old, st)
	if f := r.onUsable.Load(); f != nil && (st.unusable == nil) != (old.unusable == nil) {
		(*f)(st.unusable == nil)
	}
	if !same {
		r.log.Info("signing key set changed", "signing_with", st.id, "newest", st.newest, "oldest_live", st.oldest, "keys", len(keys))
	}
	return true, nil
}

func sameKeys(a, b []Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || (a[i].RetiredAt == nil) != (b[i].RetiredAt == nil) {
			return false
		}
	}
	return true
}

// Usable is nil while this node signs with a live key, and otherwise why
// not (ErrNoLiveKey): the node is then not ready and delivers nothing.
func (r *Ring) Usable() error { return r.st.Load().unusable }

// Signer returns the private key to sign with now.
func (r *Ring) Signer() ed25519.PrivateKey { return r.st.Load().priv }

// Current returns the private key to sign with now and its KeyID, so a
// signature can name the key that made it.
func (r *Ring) Current() (ed25519.PrivateKey, string) {
	st := r.st.Load()
	return st.priv, st.id
}

// Public returns the public half of the key signed with now.
func (r *Ring) Public() ed25519.PublicKey { return r.st.Load().priv.Public().(ed25519.PublicKey) }

// Keys returns the key set as last loaded, oldest first.
func (r *Ring) Keys() []Key { return r.st.Load().keys }

// Holds reports whether an agent whose newest and oldest trusted keys are
// these holds the live key set: the current key, and no retired one (an
// agent enrolled with a newer key never held the older ones).
func (r *Ring) Holds(newest, oldest string) bool {
	st := r.st.Load()
	if newest != st.newest {
		return false
	}
	for _, k := range st.keys {
		if k.ID == oldest {
			return k.RetiredAt == nil
		}
	}
	return false
}

// Chain returns the encoded key chain for agents and the trusted keys
// (newest, oldest) an agent that followed it holds; ok is false while
// there has never been a key change.
func (r *Ring) Chain() (chain []byte, newest, oldest string, ok bool) {
	st := r.st.Load()
	return st.chain, st.newest, st.oldest, st.chain != nil
}
