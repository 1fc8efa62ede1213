// Package agent is the ARGUS agent that runs beside a tenant's streaming
// agent. It dials out to the broker and stays dormant: it never listens on
// a port, and it runs no command without a current, signed activation.
package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/viper"

	"github.com/argus-remote/argus/internal/settings"
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
}

// Keys are the agent's settings (env ARGUS_AGENT_*).
var Keys = []settings.Key{
	{Name: "state-dir", Env: []string{"ARGUS_AGENT_STATE_DIR"}, Default: DefaultStateDir()},
	{Name: "heartbeat-interval", Env: []string{"ARGUS_AGENT_HEARTBEAT_INTERVAL"}, Default: "30s"},
	{Name: "reconnect-max-backoff", Env: []string{"ARGUS_AGENT_RECONNECT_MAX_BACKOFF"}, Default: "60s"},
	{Name: "ca-file", Env: []string{"ARGUS_AGENT_CA_FILE"}},
	{Name: "log-level", Env: []string{"ARGUS_AGENT_LOG_LEVEL"}, Default: "info"},
	{Name: "remote-support-disabled", Env: []string{"ARGUS_AGENT_REMOTE_SUPPORT_DISABLED"}, Default: false},
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
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("invalid %s: %s", settings.EnvNames(Keys, key), fmt.Sprintf(format, args...)))
	}
	if c.StateDir == "" {
		bad("state-dir", "empty")
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
