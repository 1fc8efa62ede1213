package agent_test

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/viper"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/patch"
)

func TestExampleConfigLoads(t *testing.T) {
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, filepath.Join("..", "configs", "agent.yaml"), agent.Keys))
	cfg, err := agent.ConfigFromViper(v)
	require.NoError(t, err)
	assert.Equal(t, 30*time.Second, cfg.HeartbeatInterval)
}

func TestConfig_BadHeartbeatNamed(t *testing.T) {
	t.Setenv("ARGUS_AGENT_HEARTBEAT_INTERVAL", "0.1s")
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, "", agent.Keys))
	_, err := agent.ConfigFromViper(v)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ARGUS_AGENT_HEARTBEAT_INTERVAL")
}

func TestConfig_ReadableRootsMayNotHoldSecretsOrKernelTrees(t *testing.T) {
	for name, tc := range map[string]struct{ state, root string }{
		"root holds the state dir": {"/var/lib/argus-agent", "/var/lib"},
		"the whole filesystem":     {"/var/lib/argus-agent", "/"},
		"proc":                     {"/var/lib/argus-agent", "/proc"},
		"below sys":                {"/var/lib/argus-agent", "/sys/class"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("ARGUS_AGENT_STATE_DIR", tc.state)
			v := viper.New()
			require.NoError(t, settings.Load(v, nil, "", agent.Keys))
			v.Set("readable-roots", []any{tc.root})
			_, err := agent.ConfigFromViper(v)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "readable-roots")
		})
	}
}

// loadYAML loads body as the agent's configuration file, with the state
// directory in a temporary directory.
func loadYAML(t *testing.T, body string) (agent.Config, error) {
	t.Helper()
	dir := t.TempDir()
	if !strings.Contains(body, "state-dir:") {
		t.Setenv("ARGUS_AGENT_STATE_DIR", filepath.Join(dir, "state"))
	}
	file := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(file, []byte(body), 0o600))
	v := viper.New()
	if err := settings.Load(v, nil, file, agent.Keys); err != nil {
		return agent.Config{}, err
	}
	return agent.ConfigFromViper(v)
}

func TestConfig_WrongTypesAreRefusedNamingTheKey(t *testing.T) {
	for name, tc := range map[string]struct{ key, body string }{
		"cameras as a list":              {"cameras", "cameras: [lobby, test]\n"},
		"log-files as a list":            {"log-files", "log-files: [/var/log/argus/streamer.log]\n"},
		"patch-roots as a list":          {"patch-roots", "patch-roots: [/opt/argus-streamer]\n"},
		"cameras as a string":            {"cameras", "cameras: '{\"lobby\": \"rtsp://10.0.0.5/s\"}'\n"},
		"a camera that is a number":      {"cameras", "cameras:\n  lobby: 5\n"},
		"a log with no path":             {"log-files", "log-files:\n  streamer:\n"},
		"a log given as a list":          {"log-files", "log-files:\n  streamer: [/var/log/a.log, /var/log/b.log]\n"},
		"readable-roots as a map":        {"readable-roots", "readable-roots:\n  etc: /etc/argus\n"},
		"a readable root that is a list": {"readable-roots", "readable-roots:\n  - [/etc/argus]\n"},
		"patch-keys as a map":            {"patch-keys", "patch-keys:\n  main: /etc/argus/p.pub\n"},
		"a health-check argument map":    {"patch-health-check", "patch-health-check: [/usr/bin/systemctl, {is: active}]\n"},
		"remote-support-disabled maybe":  {"remote-support-disabled", "remote-support-disabled: maybe\n"},
		"state-dir as a list":            {"state-dir", "state-dir: [/var/lib/a, /var/lib/b]\n"},
		"ffmpeg-path as a map":           {"ffmpeg-path", "ffmpeg-path:\n  bin: /usr/bin/ffmpeg\n"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loadYAML(t, tc.body)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "invalid "+tc.key)
		})
	}
}

func TestConfig_RemoteSupportDisabledFromEnvMustBeABoolean(t *testing.T) {
	t.Setenv("ARGUS_AGENT_REMOTE_SUPPORT_DISABLED", "yes")
	_, err := loadYAML(t, "")
	require.Error(t, err, "an unreadable \"no\" must not read as \"yes, allowed\"")
	assert.Contains(t, err.Error(), "remote-support-disabled")

	t.Setenv("ARGUS_AGENT_REMOTE_SUPPORT_DISABLED", "true")
	cfg, err := loadYAML(t, "")
	require.NoError(t, err)
	assert.True(t, cfg.RemoteSupportDisabled)
}

func TestConfig_CameraSchemes(t *testing.T) {
	for _, src := range []string{
		"ftp://10.0.0.5/frame.jpg",
		"file:///etc/passwd",
		"/etc/passwd",
		"concat:a.ts|b.ts",
		"pipe:0",
		"gopher://10.0.0.5/",
		"rtmp://10.0.0.5/live",
		"udp://0.0.0.0:1234",
		"tcp://0.0.0.0:1234?listen",
		"rtsp://",
		"http:///path",
		"RTSP://10.0.0.5/stream1",
		"lavfi:",
		"lavfi:movie=/etc/passwd",
		"lavfi:testsrc,drawtext=textfile=/etc/shadow",
		"lavfi:testsrc [a]; amovie=/etc/passwd [b]",
		"lavfi:zmq",
		"testpattern:big",
		"testpattern:8x8",
		"testpatterns",
		"/dev/video",
		"/dev/sda",
		"",
	} {
		t.Run(src, func(t *testing.T) {
			_, err := loadYAML(t, "cameras:\n  lobby: '"+src+"'\n")
			require.Error(t, err)
			assert.Contains(t, err.Error(), "invalid cameras")
			assert.Contains(t, err.Error(), "lobby")
		})
	}
	cfg, err := loadYAML(t, `cameras:
  a: rtsp://10.0.0.5/stream1
  b: rtsps://user:secret@cam.example.net:322/s
  c: http://10.0.0.6/video.mjpeg
  d: https://cam.example.net/snap.jpg
  e: /dev/video0
  f: lavfi:testsrc=size=352x288:rate=1
  g: testpattern
  h: testpattern:320x240
  i: "lavfi:smptebars=size=640x480,scale=320:240"
`)
	require.NoError(t, err)
	assert.Len(t, cfg.Cameras, 9)
}

func TestConfig_RelativePathsAreRefusedNamingTheKey(t *testing.T) {
	// A relative path would be read relative to wherever the agent was
	// started; a patch key found there must not be trusted.
	dir := t.TempDir()
	t.Chdir(dir)
	pub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p.pub"), []byte(patch.EncodePublic(pub)), 0o600))
	for key, body := range map[string]string{
		"log-files":      "log-files:\n  streamer: var/log/streamer.log\n",
		"readable-roots": "readable-roots: [etc/argus]\n",
		"patch-roots":    "patch-roots:\n  streamer: opt/argus-streamer\n",
		"patch-keys":     "patch-keys: [p.pub]\n",
	} {
		t.Run(key, func(t *testing.T) {
			_, err := loadYAML(t, body)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "invalid "+key)
			assert.Contains(t, err.Error(), "absolute")
		})
	}
}

func TestConfig_BrokerURLsFromEnvAndRefusedWhenNotWebSocket(t *testing.T) {
	t.Setenv("ARGUS_AGENT_BROKER_URLS", "ws://10.0.0.1:8083/mqtt, wss://node-b.example:443/mqtt")
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, "", agent.Keys))
	cfg, err := agent.ConfigFromViper(v)
	require.NoError(t, err)
	assert.Equal(t, []string{"ws://10.0.0.1:8083/mqtt", "wss://node-b.example:443/mqtt"}, cfg.BrokerURLs)

	t.Setenv("ARGUS_AGENT_BROKER_URLS", "ws://10.0.0.1:8083/mqtt,tcp://10.0.0.2:1883")
	v = viper.New()
	require.NoError(t, settings.Load(v, nil, "", agent.Keys))
	_, err = agent.ConfigFromViper(v)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ARGUS_AGENT_BROKER_URLS")
	assert.Contains(t, err.Error(), "tcp://10.0.0.2:1883")
}

func TestConfig_NoBrokerURLsMeansTheEnrollments(t *testing.T) {
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, "", agent.Keys))
	cfg, err := agent.ConfigFromViper(v)
	require.NoError(t, err)
	assert.Empty(t, cfg.BrokerURLs)
}
