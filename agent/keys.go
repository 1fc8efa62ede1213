package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/argus-remote/argus/topics"
)

// keysFile holds the control-plane keys the agent trusts (0600), written
// aside, synced and renamed, so a crash leaves the old set or the new one.
const keysFile = "signing-keys.json"

// trustedKey is one control-plane key the agent has accepted. A retired
// key is kept (as a tombstone) so no key change can bring it back.
type trustedKey struct {
	ID        string     `json:"key_id"`
	PublicKey string     `json:"public_key,omitempty"`
	AddedAt   time.Time  `json:"added_at"`
	RetiredAt *time.Time `json:"retired_at,omitempty"`

	pub ed25519.PublicKey
}

// keySetFile is the keys file's content.
type keySetFile struct {
	AgentID string `json:"agent_id"`
	// EnrolledWith is the key pinned at enrollment: a file left from an
	// earlier enrollment is not this one's.
	EnrolledWith string       `json:"enrolled_with"`
	Keys         []trustedKey `json:"keys"`
}

// keyRing is the set of control-plane keys the agent accepts signatures
// from: the one pinned at enrollment and each one introduced since by a
// key change signed with a key already trusted, less the retired ones.
type keyRing struct {
	dir string
	mu  sync.Mutex
	f   keySetFile
}

// loadKeys reads the trusted keys from dir, or starts from the key pinned
// at enrollment when there are none for this enrollment.
func loadKeys(dir string, st State) (*keyRing, error) {
	pinned, err := topics.ParsePublicKey(st.SigningPublicKey)
	if err != nil {
		return nil, err
	}
	r := &keyRing{dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, keysFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &r.f); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, keysFile), err)
		}
		for i := range r.f.Keys {
			k := &r.f.Keys[i]
			if k.PublicKey == "" {
				continue
			}
			if k.pub, err = topics.ParsePublicKey(k.PublicKey); err != nil || topics.KeyID(k.pub) != k.ID {
				return nil, fmt.Errorf("%s: key %q is damaged", filepath.Join(dir, keysFile), k.ID)
			}
		}
		if r.f.AgentID == st.AgentID && r.f.EnrolledWith == topics.KeyID(pinned) && len(r.live()) > 0 {
			return r, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	r.f = keySetFile{AgentID: st.AgentID, EnrolledWith: topics.KeyID(pinned), Keys: []trustedKey{
		{ID: topics.KeyID(pinned), PublicKey: st.SigningPublicKey, AddedAt: st.EnrolledAt, pub: pinned},
	}}
	return r, nil
}

func (r *keyRing) live() []*trustedKey {
	var out []*trustedKey
	for i := range r.f.Keys {
		if k := &r.f.Keys[i]; k.RetiredAt == nil && k.pub != nil {
			out = append(out, k)
		}
	}
	return out
}

func (r *keyRing) find(id string) *trustedKey {
	for i := range r.f.Keys {
		if r.f.Keys[i].ID == id {
			return &r.f.Keys[i]
		}
	}
	return nil
}

// open checks data against every live key and decodes it into v.
func (r *keyRing) open(purpose string, data []byte, max int, v any) error {
	r.mu.Lock()
	live := r.live()
	pubs := make([]ed25519.PublicKey, len(live))
	for i, k := range live {
		pubs[i] = k.pub
	}
	r.mu.Unlock()
	err := topics.ErrBadSignature
	for _, pub := range pubs {
		if err = topics.Open(pub, purpose, data, max, v); !errors.Is(err, topics.ErrBadSignature) {
			return err
		}
	}
	return err
}

// trusted returns the newest and oldest live keys' ids.
func (r *keyRing) trusted() (newest, oldest string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	live := r.live()
	if len(live) == 0 {
		return "", ""
	}
	return live[len(live)-1].ID, live[0].ID
}

// keyChange is what following a chain did.
type keyChange struct {
	added, retired []string
	refused        []string // why each refused link or retirement was
}

// follow applies a key chain: each link introduces its key only when a
// live key signed it, and each retirement withdraws its key only when
// another live key signed it. Anything else is refused and changes
// nothing. What changed is saved before follow returns.
func (r *keyRing) follow(msg topics.KeyChainMsg, now time.Time) (keyChange, error) {
	var c keyChange
	if len(msg.Links) > topics.MaxKeys || len(msg.Retirements) > topics.MaxKeys {
		c.refused = append(c.refused, "chain_too_long")
		return c, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.snapshot()
	for _, raw := range msg.Links {
		var claim topics.KeyLink
		if err := topics.Unverified(raw, topics.MaxEnvelope, &claim); err != nil {
			c.refused = append(c.refused, "malformed key change")
			continue
		}
		if r.find(claim.KeyID) != nil {
			continue // known already (or retired: never brought back)
		}
		signer := r.find(claim.PrevKeyID)
		var link topics.KeyLink
		if signer == nil || signer.RetiredAt != nil || signer.pub == nil ||
			topics.Open(signer.pub, topics.PurposeKeyChange, raw, topics.MaxEnvelope, &link) != nil {
			c.refused = append(c.refused, fmt.Sprintf("key change to %.32q not signed by a key this agent trusts (claims %.32q)", claim.KeyID, claim.PrevKeyID))
			continue
		}
		pub, err := topics.ParsePublicKey(link.PublicKey)
		if err != nil || topics.KeyID(pub) != link.KeyID || link.PrevKeyID != signer.ID {
			c.refused = append(c.refused, fmt.Sprintf("key change to %.32q is inconsistent", link.KeyID))
			continue
		}
		if len(r.f.Keys) >= topics.MaxKeys {
			c.refused = append(c.refused, "too many keys")
			break
		}
		r.f.Keys = append(r.f.Keys, trustedKey{ID: link.KeyID, PublicKey: link.PublicKey, AddedAt: now.UTC(), pub: pub})
		c.added = append(c.added, link.KeyID)
	}
	for _, raw := range msg.Retirements {
		var claim topics.KeyRetirement
		if err := topics.Unverified(raw, topics.MaxEnvelope, &claim); err != nil {
			c.refused = append(c.refused, "malformed retirement")
			continue
		}
		k := r.find(claim.KeyID)
		if k != nil && k.RetiredAt != nil {
			continue
		}
		signer := r.find(claim.ByKeyID)
		var ret topics.KeyRetirement
		if signer == nil || signer.RetiredAt != nil || signer.pub == nil || claim.ByKeyID == claim.KeyID ||
			topics.Open(signer.pub, topics.PurposeKeyRetire, raw, topics.MaxEnvelope, &ret) != nil ||
			ret.KeyID != claim.KeyID || ret.ByKeyID != signer.ID {
			c.refused = append(c.refused, fmt.Sprintf("retirement of %.32q not signed by another key this agent trusts (claims %.32q)", claim.KeyID, claim.ByKeyID))
			continue
		}
		at := now.UTC()
		if k == nil {
			if len(r.f.Keys) >= topics.MaxKeys {
				continue
			}
			// A key this agent never held: remembered, so no later key
			// change can introduce it.
			r.f.Keys = append(r.f.Keys, trustedKey{ID: ret.KeyID, AddedAt: at, RetiredAt: &at})
		} else {
			k.RetiredAt = &at
		}
		c.retired = append(c.retired, ret.KeyID)
	}
	if len(c.added) == 0 && len(c.retired) == 0 {
		return c, nil
	}
	if err := r.save(); err != nil {
		r.f = before
		return keyChange{}, err
	}
	return c, nil
}

func (r *keyRing) snapshot() keySetFile {
	s := r.f
	s.Keys = append([]trustedKey(nil), r.f.Keys...)
	return s
}

// save writes the key set atomically: a temporary file, synced, renamed
// over the old one, and the directory synced, all 0600.
func (r *keyRing) save() error {
	b, err := json.MarshalIndent(r.f, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}
	tmp := filepath.Join(r.dir, keysFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o600) // a leftover temporary file may have had other bits
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(r.dir, keysFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("signing keys: %w", err)
	}
	if d, err := os.Open(r.dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// onKeyChain follows a key chain the control plane published. Each link
// and retirement carries its own signature; one the agent cannot verify
// against a key it trusts is refused, and logged.
func (a *Agent) onKeyChain(ctx context.Context, payload []byte) {
	var msg topics.KeyChainMsg
	if err := topics.Decode(payload, topics.MaxKeyChain, &msg); err != nil || msg.V != topics.Version {
		a.log.Warn("refusing key change: malformed key chain", "err", err)
		a.emit("key_change_refused", "malformed")
		return
	}
	c, err := a.keys.follow(msg, time.Now())
	if err != nil {
		a.log.Error("cannot save the signing keys; key change not applied", "err", err)
		return
	}
	for _, why := range c.refused {
		a.log.Warn("refusing key change: " + why)
		a.emit("key_change_refused", why)
	}
	if len(c.added) == 0 && len(c.retired) == 0 {
		return
	}
	newest, oldest := a.keys.trusted()
	a.log.Info("control-plane signing keys changed", "added", c.added, "retired", c.retired, "newest", newest, "oldest", oldest)
	a.emit("keys_changed", newest)
	// The control plane learns from the heartbeat that the agent follows.
	a.heartbeat(ctx)
	a.mu.Lock()
	pending := a.unverified
	a.unverified = nil
	a.mu.Unlock()
	if pending != nil && len(c.added) > 0 {
		a.onActivation(ctx, pending)
	}
}
