package cli_test

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent/cli"
	"github.com/argus-remote/argus/patch"
)

func TestCheckConfig_PrintsTheAllowlists(t *testing.T) {
	t.Setenv("ARGUS_AGENT_CONFIG", "")
	dir := t.TempDir()
	pub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	pubFile := filepath.Join(dir, "patch-signing.pub")
	require.NoError(t, os.WriteFile(pubFile, []byte(patch.EncodePublic(pub)), 0o600))
	config := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(config, []byte(`log-files:
  streamer: /var/log/argus/streamer.log
  audit: /var/log/argus/audit.log
readable-roots: [/etc/argus, /var/lib/argus-streamer/config]
cameras:
  lobby: rtsp://viewer:s3cret@10.0.0.5/stream1
  test: testpattern:640x480
patch-keys: [`+pubFile+`]
patch-roots:
  streamer: /opt/argus-streamer
patch-health-check: [/usr/bin/systemctl, is-active, argus-streamer]
patch-health-timeout: 30s
`), 0o600))

	var out, errOut bytes.Buffer
	code := cli.Execute([]string{"check-config", "--config", config, "--state-dir", filepath.Join(dir, "state")}, cli.IOStreams{Out: &out, ErrOut: &errOut})
	require.Equal(t, 0, code, errOut.String())
	got := out.String()
	for _, want := range []string{
		"log-files",
		"audit: /var/log/argus/audit.log",
		"streamer: /var/log/argus/streamer.log",
		"readable-roots",
		"/etc/argus\n",
		"/var/lib/argus-streamer/config\n",
		"cameras",
		"lobby: rtsp://viewer:xxxxx@10.0.0.5/stream1",
		"test: testpattern:640x480",
		"patch-keys",
		pubFile + " (key " + patch.KeyID(pub) + ")",
		"patch-roots",
		"streamer: /opt/argus-streamer",
		"patch-health-check: /usr/bin/systemctl is-active argus-streamer (timeout 30s)",
		"remote-support-disabled: false",
		"state-dir: " + filepath.Join(dir, "state") + "\n",
	} {
		assert.Contains(t, got, want)
	}
	assert.NotContains(t, got, "s3cret", "a camera's password is not printed")
}

func TestCheckConfig_SaysWhatIsEmpty(t *testing.T) {
	t.Setenv("ARGUS_AGENT_CONFIG", "")
	var out, errOut bytes.Buffer
	code := cli.Execute([]string{"check-config", "--state-dir", t.TempDir()}, cli.IOStreams{Out: &out, ErrOut: &errOut})
	require.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "cameras (camera_view): none")
	assert.Contains(t, out.String(), "patch-keys (apply_patch trusts bundles signed by): none")
	assert.Contains(t, out.String(), "patch-health-check: none")
}

func TestCheckConfig_RefusesNamingTheKey(t *testing.T) {
	t.Setenv("ARGUS_AGENT_CONFIG", "")
	config := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(config, []byte("cameras: [lobby, test]\n"), 0o600))
	var out, errOut bytes.Buffer
	code := cli.Execute([]string{"check-config", "--config", config, "--state-dir", t.TempDir()}, cli.IOStreams{Out: &out, ErrOut: &errOut})
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut.String(), "invalid cameras")
}

// A mistyped subcommand of a parent fails naming it, with a suggestion,
// before any of the flags meant for the intended command are judged.
func TestAgentCLI_UnknownSubcommandFails(t *testing.T) {
	var out, errOut bytes.Buffer
	code := cli.Execute([]string{"kill-switch", "engag", "--reason", "freeze"}, cli.IOStreams{Out: &out, ErrOut: &errOut})
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut.String(), `unknown command "engag" for "argus-agent kill-switch"`)
	assert.Contains(t, errOut.String(), "Did you mean this?\n\tengage")
	assert.NotContains(t, out.String(), "Usage:")
}

// A packaged build names a default file (/etc/argus/agent.yaml); the
// environment and --config still choose another, and --config "" none.
func TestConfig_DefaultFileYieldsToEnvAndFlag(t *testing.T) {
	dir := t.TempDir()
	write := func(name, root string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("readable-roots: ["+root+"]\n"), 0o600))
		return p
	}
	def := write("default.yaml", "/srv/from-default")
	env := write("env.yaml", "/srv/from-env")
	flag := write("flag.yaml", "/srv/from-flag")
	old := cli.DefaultConfigFile
	cli.DefaultConfigFile = def
	t.Cleanup(func() { cli.DefaultConfigFile = old })

	for _, tc := range []struct {
		name, env string
		args      []string
		want      string
	}{
		{"default file", "", nil, "/srv/from-default\n"},
		{"environment over default", env, nil, "/srv/from-env\n"},
		{"flag over environment", env, []string{"--config", flag}, "/srv/from-flag\n"},
		{"empty flag: no file", "", []string{"--config", ""}, "readable-roots (read_file): none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("ARGUS_AGENT_CONFIG", tc.env)
			var out, errOut bytes.Buffer
			args := append([]string{"check-config", "--state-dir", filepath.Join(dir, "state")}, tc.args...)
			require.Equal(t, 0, cli.Execute(args, cli.IOStreams{Out: &out, ErrOut: &errOut}), errOut.String())
			assert.Contains(t, out.String(), tc.want)
			for _, other := range []string{"/srv/from-default", "/srv/from-env", "/srv/from-flag"} {
				if other+"\n" != tc.want {
					assert.NotContains(t, out.String(), other)
				}
			}
		})
	}

	t.Run("missing default file is an error", func(t *testing.T) {
		t.Setenv("ARGUS_AGENT_CONFIG", "")
		cli.DefaultConfigFile = filepath.Join(dir, "absent.yaml")
		var out, errOut bytes.Buffer
		assert.Equal(t, 1, cli.Execute([]string{"check-config", "--state-dir", dir}, cli.IOStreams{Out: &out, ErrOut: &errOut}))
		assert.Contains(t, errOut.String(), "absent.yaml")
	})
}
