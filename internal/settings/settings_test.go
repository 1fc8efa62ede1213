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
	assert.Equal(t, map[string]string{"streamer": "/var/log/s.log", "audit": "/var/log/a.log"}, mustMap(t, v, "log-files"))

	err := Load(viper.New(), nil, writeFile(t, "log-files:\n  streamer:\n    path: x\n"), keys)
	require.Error(t, err, "only one level below a map key")
}

func mustMap(t *testing.T, v *viper.Viper, key string) map[string]string {
	t.Helper()
	m, err := StringMap(v, key)
	require.NoError(t, err)
	return m
}

func TestStrictReaders_RefuseTheWrongShape(t *testing.T) {
	keys := append(testKeys, Key{Name: "log-files", Map: true}, Key{Name: "roots"}, Key{Name: "off"})
	load := func(body string) (*viper.Viper, error) {
		v := viper.New()
		return v, Load(v, nil, writeFile(t, body), keys)
	}

	v, err := load("log-files: [/var/log/s.log]\nroots:\n  - [/etc]\noff: maybe\n")
	require.NoError(t, err)
	_, err = StringMap(v, "log-files")
	assert.ErrorContains(t, err, "not a list")
	_, err = Strings(v, "roots")
	assert.ErrorContains(t, err, "item 1 is a list")
	_, err = Bool(v, "off")
	assert.ErrorContains(t, err, "not true or false")

	v, err = load("log-files:\n  s: 5\n")
	require.NoError(t, err)
	_, err = StringMap(v, "log-files")
	assert.ErrorContains(t, err, "s: the value is the number 5, not a string")

	_, err = load("log-files:\n  s:\n")
	assert.ErrorContains(t, err, "invalid log-files: s: the value is empty")
	_, err = load("roots:\n  etc: /etc\n")
	assert.ErrorContains(t, err, "invalid roots: give a list or one value, not a mapping")

	v, err = load("roots: [/etc, /opt]\noff: true\nhttp-addr: [a, b]\n")
	require.NoError(t, err)
	l, err := Strings(v, "roots")
	require.NoError(t, err)
	assert.Equal(t, []string{"/etc", "/opt"}, l)
	b, err := Bool(v, "off")
	require.NoError(t, err)
	assert.True(t, b)
	assert.ErrorContains(t, Value(v, "http-addr"), "not a list")
	assert.NoError(t, Value(v, "off"))
}
