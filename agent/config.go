// Package agent is the ARGUS agent that runs beside a tenant's streaming
// agent. It dials out to the broker and stays dormant: it never listens on
// a port, and it runs no command without a current, signed activation.
package agent

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
	// Cameras are the frame sources camera_view may read, by name: an
	// rtsp://, rtsps://, http:// or https:// URL or a /dev/videoN device
	// (through ffmpeg), "lavfi:GRAPH" of synthetic sources (for tests), or
	// "testpattern[:WxH]" (built in, no ffmpeg). See checkCameraSource.
	Cameras       map[string]string
	FFmpegPath    string
	CameraTimeout time.Duration
	// StreamingAgentVersionFile, when set, holds the streaming agent's
	// version for get_capabilities.
	StreamingAgentVersionFile string

	// PatchKeys are the public keys whose signatures the agent accepts on
	// patches: installed by the tenant, never received over the network.
	PatchKeys []ed25519.PublicKey
	// PatchKeyFiles are the files PatchKeys were read from, in order.
	PatchKeyFiles []string
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

	// BrokerURLs, when set, are the brokers (the nodes of a cluster) the
	// agent connects to, tried in random order at every (re)connect;
	// empty means the one URL its enrollment gave.
	BrokerURLs []string
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
	{Name: "broker-urls", Env: []string{"ARGUS_AGENT_BROKER_URLS"}},
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

// ConfigFromViper reads and validates the agent's configuration. Every
// key must hold the type it is documented with (a mapping, a list, one
// value); the allowlists' paths must be absolute and their cameras of a
// kind camera_view supports. Any error names its key.
func ConfigFromViper(v *viper.Viper) (Config, error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("invalid %s: %s", settings.EnvNames(Keys, key), fmt.Sprintf(format, args...)))
	}
	badErr := func(key string, err error) {
		// One line per problem, each naming the key.
		for _, line := range strings.Split(err.Error(), "\n") {
			bad(key, "%s", line)
		}
	}
	stringMap := func(key string) map[string]string {
		m, err := settings.StringMap(v, key)
		if err != nil {
			badErr(key, err)
		}
		return m
	}
	list := func(key string) []string {
		l, err := settings.Strings(v, key)
		if err != nil {
			badErr(key, err)
		}
		return l
	}
	for _, k := range []string{"state-dir", "heartbeat-interval", "reconnect-max-backoff", "ca-file", "log-level",
		"ffmpeg-path", "camera-timeout", "streaming-agent-version-file", "patch-health-timeout", "otlp-endpoint"} {
		if err := settings.Value(v, k); err != nil {
			badErr(k, err)
		}
	}
	c := Config{
		StateDir: v.GetString("state-dir"),
		CAFile:   v.GetString("ca-file"),

		LogFiles:                  stringMap("log-files"),
		ReadableRoots:             list("readable-roots"),
		Cameras:                   stringMap("cameras"),
		FFmpegPath:                v.GetString("ffmpeg-path"),
		StreamingAgentVersionFile: v.GetString("streaming-agent-version-file"),
		OTLPEndpoint:              v.GetString("otlp-endpoint"),
	}
	if d, err := settings.Bool(v, "remote-support-disabled"); err != nil {
		badErr("remote-support-disabled", err)
	} else {
		c.RemoteSupportDisabled = d
	}

	if c.StateDir == "" {
		bad("state-dir", "empty")
	}
	for _, name := range sortedNames(c.LogFiles) {
		if p := c.LogFiles[name]; !filepath.IsAbs(p) {
			bad("log-files", "%s: %q is not an absolute path", name, p)
		}
	}
	for _, name := range sortedNames(c.Cameras) {
		if err := checkCameraSource(c.Cameras[name]); err != nil {
			bad("cameras", "%s: %v", name, err)
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
	for _, p := range list("patch-keys") {
		// A relative key file would be read from wherever the agent was
		// started: whoever can write there could add a trusted key.
		if !filepath.IsAbs(p) {
			bad("patch-keys", "%q is not an absolute path", p)
			continue
		}
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
		c.PatchKeyFiles = append(c.PatchKeyFiles, p)
	}
	for _, u := range list("broker-urls") {
		if err := checkBrokerURL(u); err != nil {
			bad("broker-urls", "%v", err)
			continue
		}
		c.BrokerURLs = append(c.BrokerURLs, u)
	}
	c.PatchRoots = stringMap("patch-roots")
	for _, name := range sortedNames(c.PatchRoots) {
		if p := c.PatchRoots[name]; !filepath.IsAbs(p) {
			bad("patch-roots", "%s: %q is not an absolute path", name, p)
		}
	}
	if hc := v.Get("patch-health-check"); hc != nil {
		switch x := hc.(type) {
		case []any:
			for i, a := range x {
				switch a.(type) {
				case string, int, int64, float64, bool:
					c.PatchHealthCheck = append(c.PatchHealthCheck, fmt.Sprint(a))
				default:
					bad("patch-health-check", "argument %d is a list or a mapping, not a word", i+1)
				}
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

// checkBrokerURL admits a broker URL the agent can dial: ws:// or wss://
// with a host.
func checkBrokerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return fmt.Errorf("%q: need ws:// or wss:// with a host", s)
	}
	return nil
}

// videoDevice is a V4L2 capture device.
var videoDevice = regexp.MustCompile(`^/dev/video[0-9]+$`)

// lavfiFilters are the filters a lavfi: camera's graph may use: sources
// that make pictures out of nothing and transforms of them. Others can
// read files (movie, amovie, drawtext's textfile, subtitles, lut3d, ...),
// load code (frei0r, ladspa, lv2) or listen on a socket (zmq), which no
// camera may do.
var lavfiFilters = map[string]bool{
	"testsrc": true, "testsrc2": true, "smptebars": true, "smptehdbars": true, "rgbtestsrc": true,
	"yuvtestsrc": true, "pal75bars": true, "pal100bars": true, "colorspectrum": true, "color": true,
	"mandelbrot": true, "life": true, "cellauto": true, "nullsrc": true, "gradients": true,
	"scale": true, "format": true, "fps": true, "setsar": true, "setdar": true, "hflip": true,
	"vflip": true, "transpose": true, "crop": true, "pad": true, "null": true, "negate": true,
}

// checkCameraSource refuses a camera source camera_view does not support.
// ffmpeg reads many more (file:, concat:, pipe:, ftp:, udp:// with listen,
// ...), most of them reaching what the tenant did not mean to show; the
// agent runs it on the kinds a camera is.
func checkCameraSource(src string) error {
	const want = "give rtsp://, rtsps://, http:// or https:// with a host, /dev/videoN, lavfi:GRAPH or testpattern[:WxH]"
	switch {
	case src == "testpattern":
		return nil
	case strings.HasPrefix(src, "testpattern:"):
		spec := strings.TrimPrefix(src, "testpattern:")
		ws, hs, ok := strings.Cut(spec, "x")
		w, err1 := strconv.Atoi(ws)
		h, err2 := strconv.Atoi(hs)
		if !ok || err1 != nil || err2 != nil || w < 16 || h < 16 || w > maxFrameSide || h > maxFrameSide {
			return fmt.Errorf("test pattern size %q is not WxH within 16..%d", spec, maxFrameSide)
		}
		return nil
	case strings.HasPrefix(src, "lavfi:"):
		return checkLavfiGraph(strings.TrimPrefix(src, "lavfi:"))
	case strings.HasPrefix(src, "/dev/"):
		if !videoDevice.MatchString(src) {
			return fmt.Errorf("%q is not a video device (/dev/videoN)", src)
		}
		return nil
	}
	for _, scheme := range []string{"rtsp://", "rtsps://", "http://", "https://"} {
		if strings.HasPrefix(src, scheme) {
			u, err := url.Parse(src)
			if err != nil || u.Host == "" {
				return fmt.Errorf("%q is not a URL with a host", RedactSource(src))
			}
			return nil
		}
	}
	return fmt.Errorf("unsupported source %q: %s", RedactSource(src), want)
}

// checkLavfiGraph admits a filter graph made only of lavfiFilters. It
// splits at every ',' and ';', quoted or escaped or not, so a filter
// hidden in an option's value is still looked at (and refused).
func checkLavfiGraph(graph string) error {
	if strings.TrimSpace(graph) == "" {
		return errors.New("lavfi: needs a filter graph (lavfi:testsrc=size=640x480:rate=1)")
	}
	for _, part := range strings.FieldsFunc(graph, func(r rune) bool { return r == ',' || r == ';' }) {
		part = strings.TrimSpace(part)
		// Leading link labels: [in][x]name=...
		for strings.HasPrefix(part, "[") {
			end := strings.Index(part, "]")
			if end < 0 {
				return fmt.Errorf("lavfi graph %q: an unclosed label", graph)
			}
			part = strings.TrimSpace(part[end+1:])
		}
		name := part
		if i := strings.IndexAny(name, "=@[ \t"); i >= 0 {
			name = name[:i]
		}
		if !lavfiFilters[name] {
			return fmt.Errorf("lavfi graph %q: filter %q is not one of the synthetic sources and transforms a camera may use (%s)",
				graph, name, strings.Join(slices.Sorted(maps.Keys(lavfiFilters)), ", "))
		}
	}
	return nil
}

// RedactSource hides a URL's password, for messages and check-config.
func RedactSource(src string) string {
	if u, err := url.Parse(src); err == nil && u.User != nil {
		return u.Redacted()
	}
	return src
}
