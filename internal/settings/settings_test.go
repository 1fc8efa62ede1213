package settings

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var testKeys = []Key{
	{Name: "http-addr", Env: []string{"TEST_HTTP_ADDR"}, Default: "127.0.0.1:8080"},
	{Name: "cidrs", Env: []string{"TEST_CIDRS"}},
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestLoad_PrecedenceFlagsEnvFileDefault(t *testing.T) {
	file := writeFile(t, "http-addr: 127.0.0.1:1\n")
	load := func(args []string) *viper.Viper {
		fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
		fs.String("http-addr", "127.0.0.1:8080", "")
		require.NoError(t, fs.Parse(args))
		v := viper.New()
		require.NoError(t, Load(v, fs, file, testKeys))
		return v
	}
	assert.Equal(t, "127.0.0.1:1", load(nil).GetString("http-addr"), "file over default")
	t.Setenv("TEST_HTTP_ADDR", "127.0.0.1:2")
	assert.Equal(t, "127.0.0.1:2", load(nil).GetString("http-addr"), "env over file")
	assert.Equal(t, "127.0.0.1:3", load([]string{"--http-addr", "127.0.0.1:3"}).GetString("http-addr"), "flag over env")
}

func TestLoad_UnknownKeyIsNamed(t *testing.T) {
	for name, body := range map[string]string{
		"top level": "http-adr: x\n",
		"nested":    "http:\n  addr: x\n",
	} {
		t.Run(name, func(t *testing.T) {
			err := Load(viper.New(), nil, writeFile(t, body), testKeys)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "unknown key")
			assert.Contains(t, err.Error(), "http")
		})
	}
}

func TestLoad_UnparsableFileFails(t *testing.T) {
	p := writeFile(t, "http-addr: [unclosed\n")
	err := Load(viper.New(), nil, p, testKeys)
	require.Error(t, err)
	assert.Contains(t, err.Error(), p)
}

func TestList_AcceptsEveryShape(t *testing.T) {
	v := viper.New()
	v.Set("a", "10.0.0.0/8, 192.168.0.0/16")
	v.Set("b", []any{"10.0.0.0/8", "192.168.0.0/16"})
	v.Set("c", []string{"10.0.0.0/8,192.168.0.0/16"})
	want := []string{"10.0.0.0/8", "192.168.0.0/16"}
	for _, k := range []string{"a", "b", "c"} {
		assert.Equal(t, want, List(v, k), k)
	}
	assert.Empty(t, List(v, "missing"))
}

func TestLoad_MapKeys(t *testing.T) {
	keys := append(testKeys, Key{Name: "log-files", Map: true})
	v := viper.New()
	require.NoError(t, Load(v, nil, writeFile(t, "log-files:\n  streamer: /var/log/s.log\n  audit: /var/log/a.log\n"), keys))
	assert.Equal(t, map[string]string{"streamer": "/var/log/s.log", "audit": "/var/log/a.log"}, StringMap(v, "log-files"))

	err := Load(viper.New(), nil, writeFile(t, "log-files:\n  streamer:\n    path: x\n"), keys)
	require.Error(t, err, "only one level below a map key")
}
