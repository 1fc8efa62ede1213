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
