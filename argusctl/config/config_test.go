package config

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("argusctl", pflag.ContinueOnError)
	for _, n := range []string{"config", "profile", "server", "token", "ops-token", "output"} {
		fs.String(n, "", "")
	}
	require.NoError(t, fs.Parse(args))
	return fs
}

func clearEnv(t *testing.T) {
	for _, k := range []string{"ARGUSCTL_CONFIG", "ARGUSCTL_PROFILE", "ARGUSCTL_SERVER", "ARGUSCTL_TOKEN", "ARGUSCTL_OPS_TOKEN", "ARGUSCTL_OUTPUT"} {
		t.Setenv(k, "")
	}
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

const twoProfiles = `profile: prod
profiles:
  prod:
    server: https://prod.example
    token: prod-token
  lab:
    server: http://lab.example
    output: json
`

func TestLoad_DefaultsWithoutFile(t *testing.T) {
	clearEnv(t)
	c, err := Load(flags(t))
	require.NoError(t, err)
	assert.Equal(t, DefaultServer, c.Server)
	assert.Equal(t, "table", c.Output)
	assert.Empty(t, c.File)
}

func TestLoad_ProfilesAndPrecedence(t *testing.T) {
	clearEnv(t)
	file := writeConfig(t, twoProfiles)

	c, err := Load(flags(t, "--config", file))
	require.NoError(t, err)
	assert.Equal(t, "https://prod.example", c.Server, "the file's default profile")
	assert.Equal(t, "prod-token", c.Token)

	c, err = Load(flags(t, "--config", file, "--profile", "lab"))
	require.NoError(t, err)
	assert.Equal(t, "http://lab.example", c.Server)
	assert.Equal(t, "json", c.Output)
	assert.Empty(t, c.Token)

	t.Setenv("ARGUSCTL_SERVER", "http://env.example")
	c, err = Load(flags(t, "--config", file))
	require.NoError(t, err)
	assert.Equal(t, "http://env.example", c.Server, "env over profile")

	c, err = Load(flags(t, "--config", file, "--server", "http://flag.example"))
	require.NoError(t, err)
	assert.Equal(t, "http://flag.example", c.Server, "flag over env")
}

func TestLoad_Refusals(t *testing.T) {
	clearEnv(t)
	for name, tc := range map[string]struct {
		body, args, want string
	}{
		"unknown key":     {"profiles:\n  a:\n    sever: x\n", "", `unknown key "profiles.a.sever"`},
		"missing profile": {twoProfiles, "staging", `no profile "staging"`},
		"bad output":      {"profiles:\n  a:\n    output: xml\n", "a", "output"},
		"unparsable":      {"profiles: [\n", "", "config file"},
	} {
		t.Run(name, func(t *testing.T) {
			args := []string{"--config", writeConfig(t, tc.body)}
			if tc.args != "" {
				args = append(args, "--profile", tc.args)
			}
			_, err := Load(flags(t, args...))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// A server given as host:port (no scheme) means plain HTTP, as the
// default does; anything that is not an http(s) URL is refused saying
// what is expected, not with a URL parser's error.
func TestLoad_ServerAddress(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"localhost:8080", "http://localhost:8080"},
		{"argus.example.net", "http://argus.example.net"},
		{"[::1]:8080", "http://[::1]:8080"},
		{"https://argus.example.net/", "https://argus.example.net/"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			clearEnv(t)
			c, err := Load(flags(t, "--server", tc.in))
			require.NoError(t, err)
			assert.Equal(t, tc.want, c.Server)
		})
	}
	for _, in := range []string{"ftp://argus.example.net", "http://", "127.0.0.1:8080/v1?x=1", "127.0.0.1:notaport", "http://a b"} {
		t.Run(in, func(t *testing.T) {
			clearEnv(t)
			_, err := Load(flags(t, "--server", in))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "server "+strconv.Quote(in))
			assert.Contains(t, err.Error(), "http://HOST:PORT")
		})
	}
}
