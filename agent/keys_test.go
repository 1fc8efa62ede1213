package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/topics"
)

type testKey struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	id   string
}

func newTestKey(t *testing.T) testKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return testKey{pub, priv, topics.KeyID(pub)}
}

func link(t *testing.T, by testKey, prevID string, next testKey) json.RawMessage {
	b, err := topics.Sign(by.priv, topics.PurposeKeyChange, topics.KeyLink{V: 1, Seq: 1, KeyID: next.id,
		PublicKey: topics.EncodePublicKey(next.pub), PrevKeyID: prevID, IssuedAt: time.Now().UTC().Format(time.RFC3339)})
	require.NoError(t, err)
	return b
}

func retirement(t *testing.T, by testKey, byID, retiredID string) json.RawMessage {
	b, err := topics.Sign(by.priv, topics.PurposeKeyRetire, topics.KeyRetirement{V: 1, KeyID: retiredID, ByKeyID: byID})
	require.NoError(t, err)
	return b
}

func chain(links []json.RawMessage, rets ...json.RawMessage) topics.KeyChainMsg {
	return topics.KeyChainMsg{V: 1, Kind: topics.KindKeyChain, Links: links, Retirements: rets}
}

func ringFor(t *testing.T, dir string, k0 testKey) *keyRing {
	r, err := loadKeys(dir, State{AgentID: "9b2e1f4c-1a2b-4c3d-8e9f-0123456789ab", SigningPublicKey: topics.EncodePublicKey(k0.pub)})
	require.NoError(t, err)
	return r
}

func signedPing(t *testing.T, k testKey) []byte {
	b, err := topics.Sign(k.priv, topics.PurposeCommand, topics.CommandMsg{V: 1, ID: "c1", Name: "ping"})
	require.NoError(t, err)
	return b
}

// The chain is followed link by link from the pinned key; a key change or
// retirement signed by any key the agent does not trust changes nothing;
// after the retirement the old key's signatures are refused; and the set
// is saved 0600 and read back the same.
func TestKeyRing_FollowsTheSignedChainOnly(t *testing.T) {
	dir := t.TempDir()
	k0, k1, k2, evil := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	r := ringFor(t, dir, k0)
	var cmd topics.CommandMsg
	require.ErrorIs(t, r.open(topics.PurposeCommand, signedPing(t, k1), maxCommand, &cmd), topics.ErrBadSignature)

	// Forged: a new key signed by a stranger, claiming the current key.
	c, err := r.follow(chain([]json.RawMessage{link(t, evil, k0.id, evil)}), time.Now())
	require.NoError(t, err)
	assert.Empty(t, c.added)
	assert.Len(t, c.refused, 1)
	_, err = os.Stat(filepath.Join(dir, keysFile))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing changed, nothing written")

	// Two links at once: k0 → k1 → k2.
	c, err = r.follow(chain([]json.RawMessage{link(t, k0, k0.id, k1), link(t, k1, k1.id, k2)}), time.Now())
	require.NoError(t, err)
	assert.Equal(t, []string{k1.id, k2.id}, c.added)
	newest, oldest := r.trusted()
	assert.Equal(t, k2.id, newest)
	assert.Equal(t, k0.id, oldest)
	require.NoError(t, r.open(topics.PurposeCommand, signedPing(t, k0), maxCommand, &cmd), "the old key is accepted until retired")
	require.NoError(t, r.open(topics.PurposeCommand, signedPing(t, k2), maxCommand, &cmd))

	// Forged retirement of the current key, by a stranger; and a key
	// retiring itself.
	c, err = r.follow(chain(nil, retirement(t, evil, k1.id, k2.id), retirement(t, k2, k2.id, k2.id)), time.Now())
	require.NoError(t, err)
	assert.Empty(t, c.retired)
	assert.Len(t, c.refused, 2)

	// The real retirements, signed by the newest key.
	c, err = r.follow(chain(nil, retirement(t, k2, k2.id, k0.id), retirement(t, k2, k2.id, k1.id)), time.Now())
	require.NoError(t, err)
	assert.Equal(t, []string{k0.id, k1.id}, c.retired)
	require.ErrorIs(t, r.open(topics.PurposeCommand, signedPing(t, k0), maxCommand, &cmd), topics.ErrBadSignature, "retired")
	require.NoError(t, r.open(topics.PurposeCommand, signedPing(t, k2), maxCommand, &cmd))

	// A retired key cannot come back, nor introduce another.
	k3 := newTestKey(t)
	c, err = r.follow(chain([]json.RawMessage{link(t, k0, k0.id, k3)}), time.Now())
	require.NoError(t, err)
	assert.Empty(t, c.added)

	fi, err := os.Stat(filepath.Join(dir, keysFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	again := ringFor(t, dir, k0)
	newest, oldest = again.trusted()
	assert.Equal(t, k2.id, newest)
	assert.Equal(t, k2.id, oldest)
	require.ErrorIs(t, again.open(topics.PurposeCommand, signedPing(t, k0), maxCommand, &cmd), topics.ErrBadSignature)
}

// A keys file from another enrollment is not used.
func TestKeyRing_IgnoresAnotherEnrollmentsFile(t *testing.T) {
	dir := t.TempDir()
	k0, k1, other := newTestKey(t), newTestKey(t), newTestKey(t)
	r := ringFor(t, dir, k0)
	_, err := r.follow(chain([]json.RawMessage{link(t, k0, k0.id, k1)}), time.Now())
	require.NoError(t, err)
	fresh := ringFor(t, dir, other)
	newest, oldest := fresh.trusted()
	assert.Equal(t, other.id, newest)
	assert.Equal(t, other.id, oldest)
}
