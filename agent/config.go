// Package agent is the ARGUS agent that runs beside a tenant's streaming
// agent. It dials out to the broker and stays dormant: it never listens on
// a port, and it runs no command without a current, signed activation.
package agent

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/viper"

	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/patch"
)

// Config is the agent's configuration, installed by the tenant.
type Config struct {
	StateDir          string
	HeartbeatInterval time.Duration
	ReconnectMax      time.Duration
	CAFile            string
	LogLevel          slog.Level
	// RemoteSupportDisabled refuses every activation: the tenant's
	// permanent "no".
	RemoteSupportDisabled bool

	// LogFiles are the logs tail_log may read, by name; operators name a
	// log, never a path.
	LogFiles map[string]string
	// ReadableRoots are the directories read_file may read below.
	ReadableRoots []string
	// Cameras are the frame sources camera_view may read, by name: a URL
	// ffmpeg reads (rtsp://, http(s)://, /dev/video0), "lavfi:GRAPH", or
	// "testpattern[:WxH]" (built in, no ffmpeg).
	Cameras       map[string]string
	FFmpegPath    string
	CameraTimeout time.Duration
	// StreamingAgentVersionFile, when set, holds the streaming agent's
	// version for get_capabilities.
	StreamingAgentVersionFile string

	// PatchKeys are the public keys whose signatures the agent accepts on
	// patches: installed by the tenant, never received over the network.
	PatchKeys []ed25519.PublicKey
	// PatchRoots are the directories patches may write below, by name.
	PatchRoots map[string]string
	// PatchHealthCheck is a command (argv) run after a patch; if it fails,
	// the patch is rolled back. It comes from this file, never a bundle.
	PatchHealthCheck   []string
	PatchHealthTimeout time.Duration

	// OTLPEndpoint, when set, receives the agent's traces.
	OTLPEndpoint string

	// LocalAddr, when set, is the source address the agent dials from
	// (the load harness spreads agents over 127.0.0.x).
	LocalAddr string
}

// Keys are the agent's settings (env ARGUS_AGENT_*).
var Keys = []settings.Key{
	{Name: "state-dir", Env: []string{"ARGUS_AGENT_STATE_DIR"}, Default: DefaultStateDir()},
	{Name: "heartbeat-interval", Env: []string{"ARGUS_AGENT_HEARTBEAT_INTERVAL"}, Default: "30s"},
	{Name: "reconnect-max-backoff", Env: []string{"ARGUS_AGENT_RECONNECT_MAX_BACKOFF"}, Default: "60s"},
	{Name: "ca-file", Env: []string{"ARGUS_AGENT_CA_FILE"}},
	{Name: "log-level", Env: []string{"ARGUS_AGENT_LOG_LEVEL"}, Default: "info"},
	{Name: "remote-support-disabled", Env: []string{"ARGUS_AGENT_REMOTE_SUPPORT_DISABLED"}, Default: false},
	{Name: "log-files", Map: true},
	{Name: "readable-roots"},
	{Name: "cameras", Map: true},
	{Name: "ffmpeg-path", Env: []string{"ARGUS_AGENT_FFMPEG_PATH"}, Default: "ffmpeg"},
	{Name: "camera-timeout", Env: []string{"ARGUS_AGENT_CAMERA_TIMEOUT"}, Default: "10s"},
	{Name: "streaming-agent-version-file"},
	{Name: "patch-keys"},
	{Name: "patch-roots", Map: true},
	{Name: "patch-health-check"},
	{Name: "patch-health-timeout", Default: "60s"},
	{Name: "otlp-endpoint", Env: []string{"ARGUS_AGENT_OTLP_ENDPOINT"}},
}

// DefaultStateDir is /var/lib/argus-agent for root and
// ~/.local/state/argus-agent for anyone else.
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/argus-agent"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "argus-agent")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "argus-agent")
	}
	return "argus-agent-state"
}

// ConfigFromViper reads and validates the agent's configuration.
func ConfigFromViper(v *viper.Viper) (Config, error) {
	c := Config{
		StateDir: v.GetString("state-dir"),
		CAFile:   v.GetString("ca-file"),

		RemoteSupportDisabled: v.GetBool("remote-support-disabled"),

		LogFiles:                  settings.StringMap(v, "log-files"),
		ReadableRoots:             settings.List(v, "readable-roots"),
		Cameras:                   settings.StringMap(v, "cameras"),
		FFmpegPath:                v.GetString("ffmpeg-path"),
		StreamingAgentVersionFile: v.GetString("streaming-agent-version-file"),
		OTLPEndpoint:              v.GetString("otlp-endpoint"),
	}

	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("invalid %s: %s", settings.EnvNames(Keys, key), fmt.Sprintf(format, args...)))
	}
	if c.StateDir == "" {
		bad("state-dir", "empty")
	}
	for name, p := range c.LogFiles {
		if !filepath.IsAbs(p) {
			bad("log-files", "%s: %q is not an absolute path", name, p)
		}
	}
	for i, r := range c.ReadableRoots {
		if !filepath.IsAbs(r) {
			bad("readable-roots", "%q is not an absolute path", r)
		}
		r = filepath.Clean(r)
		c.ReadableRoots[i] = r
		// A root may not hold the agent's own credentials, nor kernel
		// interfaces.
		state, _ := filepath.Abs(c.StateDir)
		if within(state, r) {
			bad("readable-roots", "%q contains the state directory %s (the agent's secret)", r, state)
		}
		for _, t := range forbiddenTrees {
			if within(t, r) || within(r, t) {
				bad("readable-roots", "%q overlaps %s", r, t)
			}
		}
	}
	for _, p := range settings.List(v, "patch-keys") {
		b, err := os.ReadFile(p)
		if err != nil {
			bad("patch-keys", "%v", err)
			continue
		}
		k, err := patch.ParsePublic(string(b))
		if err != nil {
			bad("patch-keys", "%s: %v", p, err)
			continue
		}
		c.PatchKeys = append(c.PatchKeys, k)
	}
	c.PatchRoots = settings.StringMap(v, "patch-roots")
	for name, p := range c.PatchRoots {
		if !filepath.IsAbs(p) {
			bad("patch-roots", "%s: %q is not an absolute path", name, p)
		}
	}
	if hc := v.Get("patch-health-check"); hc != nil {
		switch x := hc.(type) {
		case []any:
			for _, a := range x {
				c.PatchHealthCheck = append(c.PatchHealthCheck, fmt.Sprint(a))
			}
		default:
			bad("patch-health-check", "give the command as a list of arguments ([/usr/bin/systemctl, is-active, streamer])")
		}
	}
	if d, err := time.ParseDuration(v.GetString("patch-health-timeout")); err != nil || d < time.Second || d > 10*time.Minute {
		bad("patch-health-timeout", "%q is not a duration within 1s..10m", v.GetString("patch-health-timeout"))
	} else {
		c.PatchHealthTimeout = d
	}
	if d, err := time.ParseDuration(v.GetString("camera-timeout")); err != nil || d < 100*time.Millisecond || d > 5*time.Minute {
		bad("camera-timeout", "%q is not a duration within 100ms..5m", v.GetString("camera-timeout"))
	} else {
		c.CameraTimeout = d
	}
	d, err := time.ParseDuration(v.GetString("heartbeat-interval"))
	switch {
	case err != nil:
		bad("heartbeat-interval", "%q is not a duration (like 30s)", v.GetString("heartbeat-interval"))
	case d < time.Second || d > time.Hour:
		bad("heartbeat-interval", "%v is outside 1s..1h", d)
	default:
		c.HeartbeatInterval = d
	}
	if d, err := time.ParseDuration(v.GetString("reconnect-max-backoff")); err != nil || d < time.Second || d > time.Hour {
		bad("reconnect-max-backoff", "%q is not a duration within 1s..1h", v.GetString("reconnect-max-backoff"))
	} else {
		c.ReconnectMax = d
	}
	if err := c.LogLevel.UnmarshalText([]byte(v.GetString("log-level"))); err != nil {
		bad("log-level", "%q is not debug, info, warn or error", v.GetString("log-level"))
	}
	return c, errors.Join(errs...)
}
