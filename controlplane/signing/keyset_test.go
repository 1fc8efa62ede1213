package signing_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// A rotation records a key change the current key signed; a retirement,
// one the new key signed; each step is audited twice and the ring a
// server holds follows both without being reopened.
func TestRotateRetire_SignedChainAuditedAndFollowedByTheRing(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "command-signing.key")
	first, err := signing.LoadOrCreate(path)
	require.NoError(t, err)

	ring, err := signing.OpenRing(ctx, pool, path, nil)
	require.NoError(t, err)
	_, id0 := ring.Current()
	assert.Equal(t, signing.KeyID(first.Public().(ed25519.PublicKey)), id0)
	_, _, _, ok := ring.Chain()
	assert.False(t, ok, "no key change yet: nothing to hand agents")

	k1, err := signing.Rotate(ctx, pool, dir, audit.Entry{Actor: "system:test"})
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(dir, k1.File))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	var link topics.KeyLink
	require.NoError(t, topics.Open(first.Public().(ed25519.PublicKey), topics.PurposeKeyChange, k1.Link, topics.MaxEnvelope, &link))
	assert.Equal(t, k1.ID, link.KeyID)
	assert.Equal(t, id0, link.PrevKeyID)

	changed, err := ring.Refresh(ctx)
	require.NoError(t, err)
	assert.True(t, changed)
	priv, id := ring.Current()
	assert.Equal(t, k1.ID, id, "the ring signs with the new key at once")
	assert.Equal(t, k1.Public, priv.Public().(ed25519.PublicKey))
	chain, newest, oldest, ok := ring.Chain()
	require.True(t, ok)
	assert.Equal(t, k1.ID, newest)
	assert.Equal(t, id0, oldest)
	assert.True(t, ring.Holds(k1.ID, id0), "both keys")
	assert.True(t, ring.Holds(k1.ID, k1.ID), "enrolled with the new key: never held the old")
	assert.False(t, ring.Holds(id0, id0), "behind")
	var msg topics.KeyChainMsg
	require.NoError(t, json.Unmarshal(chain, &msg))
	assert.Len(t, msg.Links, 1)
	assert.True(t, topics.IsKeyChain(chain))

	retired, err := signing.Retire(ctx, pool, dir, audit.Entry{Actor: "system:test"})
	require.NoError(t, err)
	require.Len(t, retired, 1)
	assert.Equal(t, id0, retired[0].ID)
	var r topics.KeyRetirement
	require.NoError(t, topics.Open(k1.Public, topics.PurposeKeyRetire, retired[0].Retirement, topics.MaxEnvelope, &r))
	assert.Equal(t, id0, r.KeyID)
	_, err = os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist, "the retired private key is deleted")

	_, err = signing.Retire(ctx, pool, dir, audit.Entry{Actor: "system:test"})
	assert.ErrorIs(t, err, signing.ErrNothingToRetire)

	_, err = ring.Refresh(ctx)
	require.NoError(t, err)
	_, newest, oldest, _ = ring.Chain()
	assert.Equal(t, k1.ID, newest)
	assert.Equal(t, k1.ID, oldest)
	assert.False(t, ring.Holds(k1.ID, id0), "still trusts the retired key")
	assert.True(t, ring.Holds(k1.ID, k1.ID))

	for action, want := range map[string][2]int{
		"signing_key.adopt": {1, 0}, "signing_key.rotate": {1, 0}, "signing_key.retire": {1, 1},
	} {
		var ok, denied, events int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE outcome = 'success'), count(*) FILTER (WHERE outcome = 'denied')
			FROM audit_log WHERE action = $1`, action).Scan(&ok, &denied))
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = $1`, action).Scan(&events))
		assert.Equal(t, want[0], ok, action)
		assert.Equal(t, want[1], denied, action)
		assert.Equal(t, want[0]+want[1], events, action)
	}

	// A server restarted after the retirement (its configured key file
	// gone) signs with the current key, and creates no new one.
	ring2, err := signing.OpenRing(ctx, pool, path, nil)
	require.NoError(t, err)
	_, id = ring2.Current()
	assert.Equal(t, k1.ID, id)
	_, err = os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// A rotation whose current private key is not the recorded one refuses,
// records nothing and leaves no new key file.
func TestRotate_RefusesAForeignKeyFile(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "command-signing.key")
	_, err := signing.Bootstrap(ctx, pool, path)
	require.NoError(t, err)
	require.NoError(t, os.Remove(path))
	_, err = signing.LoadOrCreate(path) // someone replaced the file
	require.NoError(t, err)

	_, err = signing.Rotate(ctx, pool, dir, audit.Entry{Actor: "system:test"})
	require.ErrorIs(t, err, signing.ErrKeyFile)
	keys, err := signing.Keys(ctx, pool)
	require.NoError(t, err)
	assert.Len(t, keys, 1)
	files, _ := filepath.Glob(filepath.Join(dir, "command-signing-*"))
	assert.Empty(t, files)
	var failures int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'signing_key.rotate' AND outcome = 'failure'`).Scan(&failures))
	assert.Equal(t, 1, failures)
}

func TestKeyID_IsHexOfTheFirst16BytesOfSHA256(t *testing.T) {
	pub := ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
	// sha256 of 32 zero bytes: 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925
	assert.Equal(t, "66687aadf862bd776c8fc18b8e9f8e20", signing.KeyID(pub))
}

// A node whose key directory is another machine's (the rotation ran
// elsewhere and its file was not copied here): after the rotation it
// signs with the old key, which agents still accept; after the
// retirement it signs nothing agents accept and says why (Usable), yet
// still hands agents the chain with the retirement; once the new file is
// copied in, it signs with the new key, without being reopened.
func TestRing_ANodeWithoutTheNewKeyFileStopsSigningAtRetirement(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	here, there := t.TempDir(), t.TempDir()
	path := filepath.Join(here, "command-signing.key")
	first, err := signing.LoadOrCreate(path)
	require.NoError(t, err)
	pem, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(there, "command-signing.key"), pem, 0o600))
	ring, err := signing.OpenRing(ctx, pool, path, nil)
	require.NoError(t, err)
	id0 := signing.KeyID(first.Public().(ed25519.PublicKey))

	k1, err := signing.Rotate(ctx, pool, there, audit.Entry{Actor: "system:test"})
	require.NoError(t, err)
	_, err = ring.Refresh(ctx)
	require.NoError(t, err)
	_, id := ring.Current()
	assert.Equal(t, id0, id, "behind, but on a key agents still accept")
	assert.NoError(t, ring.Usable())

	_, err = signing.Retire(ctx, pool, there, audit.Entry{Actor: "system:test"})
	require.NoError(t, err)
	_, err = ring.Refresh(ctx)
	require.NoError(t, err, "a retirement this node cannot follow with a key is no read failure")
	assert.ErrorIs(t, ring.Usable(), signing.ErrNoLiveKey)
	assert.Contains(t, ring.Usable().Error(), k1.File, "it names the file to copy")
	priv, id := ring.Current()
	require.Len(t, priv, ed25519.PrivateKeySize, "a caller that signs anyway cannot panic")
	assert.NotEqual(t, id0, id, "never the retired key")
	assert.False(t, priv.Public().(ed25519.PublicKey).Equal(first.Public()), "never the retired key")
	assert.False(t, priv.Public().(ed25519.PublicKey).Equal(k1.Public), "not a key it does not hold")
	_, newest, oldest, ok := ring.Chain()
	require.True(t, ok)
	assert.Equal(t, [2]string{k1.ID, k1.ID}, [2]string{newest, oldest}, "agents here still get the retirement")

	pem, err = os.ReadFile(filepath.Join(there, k1.File))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(here, k1.File), pem, 0o600))
	changed, err := ring.Refresh(ctx)
	require.NoError(t, err)
	assert.True(t, changed)
	assert.NoError(t, ring.Usable())
	priv, id = ring.Current()
	assert.Equal(t, k1.ID, id)
	assert.True(t, priv.Public().(ed25519.PublicKey).Equal(k1.Public))

	// Restarted without any live key's file, a node refuses to start.
	require.NoError(t, os.Remove(filepath.Join(here, k1.File)))
	_, err = signing.OpenRing(ctx, pool, path, nil)
	assert.ErrorIs(t, err, signing.ErrNoLiveKey)
}
