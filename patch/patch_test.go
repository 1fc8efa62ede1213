package patch

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sample(t *testing.T, key ed25519.PrivateKey, notAfter time.Time) []byte {
	t.Helper()
	b, err := Build(Manifest{ID: "HF-1", Version: "1.2.0", Root: "streamer", NotAfter: notAfter,
		Files: []File{{Target: "bin/run.sh", Mode: "0755"}, {Target: "etc/app.conf"}}},
		map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v2\n"), "etc/app.conf": []byte("level=2\n")}, key)
	require.NoError(t, err)
	return b
}

func code(err error) string {
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return ""
}

func TestOpen(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	otherPub, otherKey, _ := ed25519.GenerateKey(nil)
	good := sample(t, key, time.Time{})

	m, files, err := Open(good, []ed25519.PublicKey{otherPub, pub}, time.Now())
	require.NoError(t, err)
	assert.Equal(t, "streamer", m.Series, "the series defaults to the root")
	assert.Equal(t, "level=2\n", string(files["etc/app.conf"]))

	_, _, err = Open(sample(t, otherKey, time.Time{}), []ed25519.PublicKey{pub}, time.Now())
	assert.Equal(t, CodeUnknownSigner, code(err))

	_, _, err = Open(sample(t, key, time.Now().Add(-time.Hour)), []ed25519.PublicKey{pub}, time.Now())
	assert.Equal(t, CodeExpired, code(err))

	var raw bundle
	require.NoError(t, json.Unmarshal(good, &raw))
	raw.Files["etc/app.conf"] = []byte("level=9\n")
	tampered, _ := json.Marshal(raw)
	_, _, err = Open(tampered, []ed25519.PublicKey{pub}, time.Now())
	assert.Equal(t, CodeDigestMismatch, code(err))

	require.NoError(t, json.Unmarshal(good, &raw))
	raw.Manifest = []byte(string(raw.Manifest[:len(raw.Manifest)-1]) + ` `)
	tampered, _ = json.Marshal(raw)
	_, _, err = Open(tampered, []ed25519.PublicKey{pub}, time.Now())
	assert.Equal(t, CodeBadSignature, code(err))
}

func TestTargets(t *testing.T) {
	for _, bad := range []string{"../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", "", ".", "a\\b"} {
		assert.Equal(t, CodePathNotAllowed, code(CheckTarget(bad)), bad)
	}
	assert.NoError(t, CheckTarget("bin/streamer"))
}

func TestNewer(t *testing.T) {
	assert.True(t, Newer("1.2.10", "1.2.9"))
	assert.True(t, Newer("2", "1.9.9"))
	assert.False(t, Newer("1.2.0", "1.2"))
	assert.False(t, Newer("1.0", "1.0.1"))
}

func TestOpen_UnknownSignerNamesTheKeysNotAnAgent(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	_, otherKey, _ := ed25519.GenerateKey(nil)
	signer := KeyID(otherKey.Public().(ed25519.PublicKey))
	_, _, err := Open(sample(t, otherKey, time.Time{}), []ed25519.PublicKey{pub}, time.Now())
	require.Error(t, err)
	assert.Equal(t, CodeUnknownSigner, code(err))
	// Open runs offline too (argusctl patch verify): the refusal is about
	// keys, whoever holds them.
	assert.NotContains(t, err.Error(), "agent")
	assert.Contains(t, err.Error(), "signed by key "+signer)
	assert.Contains(t, err.Error(), KeyID(pub), "the keys it was checked against are named")
	assert.Equal(t, signer, SignerKeyID(sample(t, otherKey, time.Time{})))
}
