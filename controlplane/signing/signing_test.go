package signing

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadOrCreate_CreatesOnceThenLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "command-signing.key")
	a, err := LoadOrCreate(path)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	b, err := LoadOrCreate(path)
	require.NoError(t, err)
	assert.Equal(t, a, b)

	assert.Len(t, a.Public().(ed25519.PublicKey), ed25519.PublicKeySize)
}

func TestKeyID_IsTheHexOfTheFirst16BytesOfTheKeysSHA256(t *testing.T) {
	pub := ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
	// sha256 of 32 zero bytes: 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925
	assert.Equal(t, "66687aadf862bd776c8fc18b8e9f8e20", KeyID(pub))
	other := ed25519.PublicKey(append(make([]byte, ed25519.PublicKeySize-1), 1))
	assert.NotEqual(t, KeyID(pub), KeyID(other))
}
