package credential

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMint_ParsesBackAndVerifies(t *testing.T) {
	m, err := Mint(Operator)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(m.Plain, "argus_pat_"))
	id, secret, err := Parse(Operator, m.Plain)
	require.NoError(t, err)
	assert.Equal(t, m.ID, id)
	assert.True(t, Verify(m.Hash, secret))
	assert.False(t, Verify(m.Hash, strings.Repeat("0", 64)))
	assert.NotContains(t, string(m.Hash), secret, "the stored hash must not hold the secret")
}

func TestMint_IsRandom(t *testing.T) {
	a, err := Mint(Session)
	require.NoError(t, err)
	b, err := Mint(Session)
	require.NoError(t, err)
	assert.NotEqual(t, a.Plain, b.Plain)
	assert.NotEqual(t, a.ID, b.ID)
}

func TestParse_RefusesMalformed(t *testing.T) {
	good, err := Mint(Operator)
	require.NoError(t, err)
	for name, tok := range map[string]string{
		"empty":      "",
		"wrong kind": strings.Replace(good.Plain, "_pat_", "_ses_", 1),
		"truncated":  good.Plain[:len(good.Plain)-1],
		"too long":   good.Plain + "0",
		"upper hex":  good.Plain[:len(good.Plain)-1] + "A",
		"bad id":     "argus_pat_" + strings.Repeat("!", idLen) + good.Plain[len("argus_pat_")+idLen:],
		"no sep":     strings.Replace(good.Plain, good.ID+"_", good.ID+"x", 1),
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Parse(Operator, tok)
			assert.ErrorIs(t, err, ErrMalformed)
		})
	}
}
