// Package server assembles argus-server: its configuration, its database
// (a configured PostgreSQL or a private cluster in the data directory), the
// embedded broker and the control-plane HTTP API.
package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/viper"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/controlplane/auditstream"
	"github.com/argus-remote/argus/controlplane/mail"
	"github.com/argus-remote/argus/internal/settings"
)

// Config is argus-server's configuration.
type Config struct {
	DataDir     string
	DatabaseURL string

	HTTPAddr    string
	HTTPTLSCert string
	HTTPTLSKey  string

	MQTTWSAddr    string
	MQTTWSPath    string
	MQTTTLSCert   string
	MQTTTLSKey    string
	MQTTOrigins   []string
	MQTTMaxPacket uint32
	// MQTTConnectTimeout and MQTTMaxPendingPerSource: see broker.Config's
	// ConnectTimeout and MaxPendingPerSource (here 0 is no bound).
	MQTTConnectTimeout      time.Duration
	MQTTMaxPendingPerSource int
	// MQTTMaxClients: see broker.Config's MaxClients (0: from the
	// descriptor limit).
	MQTTMaxClients int
	RemoteSupport  bool
	OperatorCIDRs  []netip.Prefix
	TrustedProxies []netip.Prefix
	OpsToken       string

	// NodeID names this node in the cluster; empty means the one kept in
	// the data dir (made on first start).
	NodeID            string
	Cluster           ClusterConfig
	MQTTPublicURL     string
	CommandSigningKey string

	SMTP              mail.Config
	ReconcileAt       time.Duration
	ReconcileOverlap  time.Duration
	ReconcileAllClear bool

	// AuditStream is the syslog receiver the audit is streamed to; off
	// when its Addr is empty.
	AuditStream auditstream.Config

	OTLPEndpoint    string
	EnrollPerMinute int
	// CommandTimeout bounds the wait for one command's answer.
	CommandTimeout time.Duration
	// CommandReconnectWait bounds how long a command waits for an agent
	// that is reconnecting, or between nodes, before it is refused
	// (agent_offline).
	CommandReconnectWait time.Duration
	// PprofAddr, when set, serves Go's profiles there (loopback only).
	PprofAddr string
	// GCHeapFloor is the heap goal, in bytes, below which the collector
	// is not run more often (heapfloor); 0 leaves GOGC alone. Set by the
	// serve command, which owns the process.
	GCHeapFloor uint64
	// SpanProcessor, when set (by tests), also receives every span.
	SpanProcessor sdktrace.SpanProcessor
	// AfterActivationCommit, when set (by tests), runs between an
	// activation's commit and its broker steps.
	AfterActivationCommit func(sessionID string)

	LogLevel  slog.Level
	LogFormat string
}

// Keys are the server's settings. The remote-support names are the
// product's own (REMOTE_SUPPORT_ENABLED, REMOTE_SUPPORT_OPERATOR_CIDRS,
// ARGUS_OPS_TOKEN); everything else is ARGUS_*.
var Keys = []settings.Key{
	{Name: "data-dir", Env: []string{"ARGUS_DATA_DIR"}, Default: DefaultDataDir()},
	{Name: "database-url", Env: []string{"ARGUS_DATABASE_URL"}},
	{Name: "http-addr", Env: []string{"ARGUS_HTTP_ADDR"}, Default: "127.0.0.1:8080"},
	{Name: "http-tls-cert", Env: []string{"ARGUS_HTTP_TLS_CERT"}},
	{Name: "http-tls-key", Env: []string{"ARGUS_HTTP_TLS_KEY"}},
	{Name: "mqtt-ws-addr", Env: []string{"ARGUS_MQTT_WS_ADDR"}, Default: "127.0.0.1:8083"},
	{Name: "mqtt-ws-path", Env: []string{"ARGUS_MQTT_WS_PATH"}, Default: "/mqtt"},
	{Name: "mqtt-tls-cert", Env: []string{"ARGUS_MQTT_TLS_CERT"}},
	{Name: "mqtt-tls-key", Env: []string{"ARGUS_MQTT_TLS_KEY"}},
	{Name: "mqtt-allowed-origins", Env: []string{"ARGUS_MQTT_ALLOWED_ORIGINS"}},
	// Big enough for the largest command result (an 8 MiB result plus
	// MQTT framing), and no bigger.
	{Name: "mqtt-max-packet-size", Env: []string{"ARGUS_MQTT_MAX_PACKET_SIZE"}, Default: 8<<20 + 64<<10},
	{Name: "mqtt-connect-timeout", Env: []string{"ARGUS_MQTT_CONNECT_TIMEOUT"}, Default: "10s"},
	{Name: "mqtt-max-pending-per-source", Env: []string{"ARGUS_MQTT_MAX_PENDING_PER_SOURCE"}, Default: broker.DefaultMaxPendingPerSource},
	{Name: "mqtt-max-clients", Env: []string{"ARGUS_MQTT_MAX_CLIENTS"}, Default: 0},
	{Name: "remote-support-enabled", Env: []string{"REMOTE_SUPPORT_ENABLED"}, Default: false},
	{Name: "remote-support-operator-cidrs", Env: []string{"REMOTE_SUPPORT_OPERATOR_CIDRS"}},
	{Name: "ops-token", Env: []string{"ARGUS_OPS_TOKEN"}},
	{Name: "trusted-proxies", Env: []string{"ARGUS_TRUSTED_PROXIES"}},
	{Name: "mqtt-public-url", Env: []string{"ARGUS_MQTT_PUBLIC_URL"}},
	{Name: "node-id", Env: []string{"ARGUS_NODE_ID"}},
	{Name: "cluster-name", Env: []string{"ARGUS_CLUSTER_NAME"}, Default: "argus"},
	{Name: "cluster-secret", Env: []string{"ARGUS_CLUSTER_SECRET"}},
	{Name: "cluster-secret-file", Env: []string{"ARGUS_CLUSTER_SECRET_FILE"}},
	{Name: "cluster-listen", Env: []string{"ARGUS_CLUSTER_LISTEN"}},
	{Name: "cluster-peers", Env: []string{"ARGUS_CLUSTER_PEERS"}},
	{Name: "cluster-nats-url", Env: []string{"ARGUS_CLUSTER_NATS_URL"}},
	{Name: "cluster-nats-creds", Env: []string{"ARGUS_CLUSTER_NATS_CREDS"}},
	{Name: "cluster-nats-ca-file", Env: []string{"ARGUS_CLUSTER_NATS_CA_FILE"}},
	{Name: "cluster-lease", Env: []string{"ARGUS_CLUSTER_LEASE"}, Default: "10s"},
	{Name: "cluster-drain-delay", Env: []string{"ARGUS_CLUSTER_DRAIN_DELAY"}, Default: "2s"},
	{Name: "cluster-drain-timeout", Env: []string{"ARGUS_CLUSTER_DRAIN_TIMEOUT"}, Default: "30s"},
	{Name: "cluster-drain-handover-timeout", Env: []string{"ARGUS_CLUSTER_DRAIN_HANDOVER_TIMEOUT"}, Default: "10s"},
	{Name: "cluster-drain-evict-rate", Env: []string{"ARGUS_CLUSTER_DRAIN_EVICT_RATE"}, Default: "2000"},
	{Name: "cluster-status-resync", Env: []string{"ARGUS_CLUSTER_STATUS_RESYNC"}, Default: "30s"},
	{Name: "command-signing-key", Env: []string{"ARGUS_COMMAND_SIGNING_KEY"}},
	{Name: "smtp-host", Env: []string{"ARGUS_SMTP_HOST"}},
	{Name: "smtp-port", Env: []string{"ARGUS_SMTP_PORT"}, Default: 587},
	{Name: "smtp-from", Env: []string{"ARGUS_SMTP_FROM"}},
	{Name: "smtp-to", Env: []string{"ARGUS_SMTP_TO"}},
	{Name: "smtp-username", Env: []string{"ARGUS_SMTP_USERNAME"}},
	{Name: "smtp-password", Env: []string{"ARGUS_SMTP_PASSWORD"}},
	{Name: "smtp-starttls", Env: []string{"ARGUS_SMTP_STARTTLS"}, Default: true},
	{Name: "smtp-ca-file", Env: []string{"ARGUS_SMTP_CA_FILE"}},
	{Name: "audit-reconcile-at", Env: []string{"ARGUS_AUDIT_RECONCILE_AT"}, Default: "02:00"},
	{Name: "audit-reconcile-overlap", Env: []string{"ARGUS_AUDIT_RECONCILE_OVERLAP"}, Default: "1h"},
	{Name: "audit-all-clear-mail", Env: []string{"ARGUS_AUDIT_ALL_CLEAR_MAIL"}, Default: false},
	{Name: "audit-stream-addr", Env: []string{"ARGUS_AUDIT_STREAM_ADDR"}},
	{Name: "audit-stream-tls", Env: []string{"ARGUS_AUDIT_STREAM_TLS"}, Default: false},
	{Name: "audit-stream-ca-file", Env: []string{"ARGUS_AUDIT_STREAM_CA_FILE"}},
	{Name: "audit-stream-max-lag", Env: []string{"ARGUS_AUDIT_STREAM_MAX_LAG"}, Default: "1m"},
	// 8 KiB: what every RFC 5425 receiver must take (rsyslog's default).
	{Name: "audit-stream-max-message", Env: []string{"ARGUS_AUDIT_STREAM_MAX_MESSAGE"}, Default: 8192},
	{Name: "otlp-endpoint", Env: []string{"ARGUS_OTLP_ENDPOINT"}},
	{Name: "pprof-addr", Env: []string{"ARGUS_PPROF_ADDR"}},
	{Name: "gc-heap-floor", Env: []string{"ARGUS_GC_HEAP_FLOOR"}, Default: 64 << 20},
	{Name: "enroll-rate-limit", Env: []string{"ARGUS_ENROLL_RATE_LIMIT"}, Default: 10},
	// Unset: 3s alone, 10s in a cluster, where an agent between nodes
	// takes longer to be back than one reconnecting to the same server.
	{Name: "command-reconnect-wait", Env: []string{"ARGUS_COMMAND_RECONNECT_WAIT"}},
	{Name: "command-timeout", Env: []string{"ARGUS_COMMAND_TIMEOUT"}, Default: "30s"},
	{Name: "log-level", Env: []string{"ARGUS_LOG_LEVEL"}, Default: "info"},
	{Name: "log-format", Env: []string{"ARGUS_LOG_FORMAT"}, Default: "text"},
}

// minOpsTokenLen keeps the second factor from being guessable.
const minOpsTokenLen = 32

// DefaultDataDir is /var/lib/argus for root (a system service) and
// $XDG_DATA_HOME/argus (~/.local/share/argus) for anyone else.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/argus"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "argus")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "argus")
	}
	return "argus-data"
}

// FromViper reads and validates the configuration. Each error names the
// setting and its environment variable.
func FromViper(v *viper.Viper) (Config, error) {
	c := Config{
		DataDir:     v.GetString("data-dir"),
		DatabaseURL: v.GetString("database-url"),
		HTTPAddr:    v.GetString("http-addr"),
		HTTPTLSCert: v.GetString("http-tls-cert"),
		HTTPTLSKey:  v.GetString("http-tls-key"),
		MQTTWSAddr:  v.GetString("mqtt-ws-addr"),
		MQTTWSPath:  v.GetString("mqtt-ws-path"),
		MQTTTLSCert: v.GetString("mqtt-tls-cert"),
		MQTTTLSKey:  v.GetString("mqtt-tls-key"),
		MQTTOrigins: settings.List(v, "mqtt-allowed-origins"),
		OpsToken:    v.GetString("ops-token"),
		LogFormat:   v.GetString("log-format"),

		OTLPEndpoint:      v.GetString("otlp-endpoint"),
		EnrollPerMinute:   v.GetInt("enroll-rate-limit"),
		PprofAddr:         v.GetString("pprof-addr"),
		NodeID:            v.GetString("node-id"),
		MQTTPublicURL:     v.GetString("mqtt-public-url"),
		CommandSigningKey: v.GetString("command-signing-key"),
	}
	c.SMTP = mail.Config{
		Host: v.GetString("smtp-host"), Port: v.GetInt("smtp-port"), From: v.GetString("smtp-from"), To: settings.List(v, "smtp-to"),
		Username: v.GetString("smtp-username"), Password: v.GetString("smtp-password"), CAFile: v.GetString("smtp-ca-file"),
	}
	if c.CommandSigningKey == "" && c.DataDir != "" {
		c.CommandSigningKey = filepath.Join(c.DataDir, "command-signing.key")
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("invalid %s: %s", settings.EnvNames(Keys, key), fmt.Sprintf(format, args...)))
	}

	var err error
	if c.RemoteSupport, err = parseBool(v.Get("remote-support-enabled")); err != nil {
		bad("remote-support-enabled", "%v", err)
	}
	if c.OperatorCIDRs, err = parsePrefixes(settings.List(v, "remote-support-operator-cidrs")); err != nil {
		bad("remote-support-operator-cidrs", "%v", err)
	}
	if c.TrustedProxies, err = parsePrefixes(settings.List(v, "trusted-proxies")); err != nil {
		bad("trusted-proxies", "%v", err)
	}
	if n := v.GetInt64("mqtt-max-packet-size"); n < 1024 || n > 64<<20 {
		bad("mqtt-max-packet-size", "%d is outside 1024..67108864 bytes", n)
	} else {
		c.MQTTMaxPacket = uint32(n)
	}
	durationSetting(v, bad, "mqtt-connect-timeout", time.Second, 5*time.Minute, &c.MQTTConnectTimeout)
	if n := v.GetInt64("mqtt-max-pending-per-source"); n < 0 || n > 1<<20 {
		bad("mqtt-max-pending-per-source", "%d is outside 0..1048576 (0: no bound)", n)
	} else {
		c.MQTTMaxPendingPerSource = int(n)
	}
	if n := v.GetInt64("mqtt-max-clients"); n < 0 || n > 1<<30 {
		bad("mqtt-max-clients", "%d is outside 0..1073741824 (0: the descriptor limit less %d)", n, broker.DescriptorReserve)
	} else {
		c.MQTTMaxClients = int(n)
	}
	if n := v.GetInt64("gc-heap-floor"); n < 0 || n > 64<<30 {
		bad("gc-heap-floor", "%d is outside 0..68719476736 bytes", n)
	} else {
		c.GCHeapFloor = uint64(n)
	}
	if c.DataDir == "" && c.DatabaseURL == "" {
		bad("data-dir", "empty, and no database-url is set")
	}
	for key, addr := range map[string]string{"http-addr": c.HTTPAddr, "mqtt-ws-addr": c.MQTTWSAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port", addr)
		}
	}
	if u := c.MQTTPublicURL; u != "" && !strings.HasPrefix(u, "ws://") && !strings.HasPrefix(u, "wss://") {
		bad("mqtt-public-url", "%q is not a ws:// or wss:// URL", u)
	}
	if c.PprofAddr != "" {
		if host, _, err := net.SplitHostPort(c.PprofAddr); err != nil || (host != "127.0.0.1" && host != "::1" && host != "localhost") {
			bad("pprof-addr", "%q must be a loopback host:port", c.PprofAddr)
		}
	}
	if c.NodeID != "" && !ValidNodeID(c.NodeID) {
		bad("node-id", "%q: use 1 to 63 letters, digits, - and _, starting with a letter or digit", c.NodeID)
	}
	c.Cluster = clusterFromViper(v, c, bad)
	if !strings.HasPrefix(c.MQTTWSPath, "/") {
		bad("mqtt-ws-path", "%q does not start with /", c.MQTTWSPath)
	}
	if (c.HTTPTLSCert == "") != (c.HTTPTLSKey == "") {
		bad("http-tls-cert", "http-tls-cert and http-tls-key go together")
	}
	if (c.MQTTTLSCert == "") != (c.MQTTTLSKey == "") {
		bad("mqtt-tls-cert", "mqtt-tls-cert and mqtt-tls-key go together")
	}
	if c.OpsToken != "" && len(c.OpsToken) < minOpsTokenLen {
		bad("ops-token", "shorter than %d characters", minOpsTokenLen)
	}
	if c.RemoteSupport && c.OpsToken == "" {
		bad("ops-token", "remote support is enabled but no ops token is set")
	}
	if c.SMTP.StartTLS, err = parseBool(v.Get("smtp-starttls")); err != nil {
		bad("smtp-starttls", "%v", err)
	}
	if c.SMTP.Host != "" && (c.SMTP.From == "" || len(c.SMTP.To) == 0) {
		bad("smtp-host", "mail needs smtp-from and smtp-to as well")
	}
	if hm, err := time.Parse("15:04", v.GetString("audit-reconcile-at")); err != nil {
		bad("audit-reconcile-at", "%q is not a UTC time of day (HH:MM)", v.GetString("audit-reconcile-at"))
	} else {
		c.ReconcileAt = time.Duration(hm.Hour())*time.Hour + time.Duration(hm.Minute())*time.Minute
	}
	durationSetting(v, bad, "command-timeout", time.Second, 10*time.Minute, &c.CommandTimeout)
	if v.GetString("command-reconnect-wait") == "" {
		c.CommandReconnectWait = 3 * time.Second
		if c.Cluster.Multi() {
			c.CommandReconnectWait = 10 * time.Second
		}
	} else if d, err := time.ParseDuration(v.GetString("command-reconnect-wait")); err != nil || d <= 0 || d > time.Minute {
		bad("command-reconnect-wait", "%q is not a duration within 0..1m", v.GetString("command-reconnect-wait"))
	} else {
		c.CommandReconnectWait = d
	}
	durationSetting(v, bad, "audit-reconcile-overlap", 0, 24*time.Hour, &c.ReconcileOverlap)
	if c.ReconcileAllClear, err = parseBool(v.Get("audit-all-clear-mail")); err != nil {
		bad("audit-all-clear-mail", "%v", err)
	}
	c.AuditStream = auditstream.Config{Addr: v.GetString("audit-stream-addr"), CAFile: v.GetString("audit-stream-ca-file"), Hostname: c.NodeID}
	if a := c.AuditStream.Addr; a != "" {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			bad("audit-stream-addr", "%q is not host:port", a)
		}
	}
	if c.AuditStream.TLS, err = parseBool(v.Get("audit-stream-tls")); err != nil {
		bad("audit-stream-tls", "%v", err)
	}
	if c.AuditStream.CAFile != "" && !c.AuditStream.TLS {
		bad("audit-stream-ca-file", "set, but audit-stream-tls is off")
	}
	// An event takes a second to count as accepted: less would alarm a stream at work.
	durationSetting(v, bad, "audit-stream-max-lag", 5*time.Second, 24*time.Hour, &c.AuditStream.MaxLag)
	if n := v.GetInt64("audit-stream-max-message"); n < auditstream.MinMessage || n > 1<<20 {
		bad("audit-stream-max-message", "%d is outside %d..1048576 bytes", n, auditstream.MinMessage)
	} else {
		c.AuditStream.MaxMessage = int(n)
	}
	if err := c.LogLevel.UnmarshalText([]byte(v.GetString("log-level"))); err != nil {
		bad("log-level", "%q is not debug, info, warn or error", v.GetString("log-level"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log-format", "%q is not text or json", c.LogFormat)
	}
	return c, errors.Join(errs...)
}

func parseBool(v any) (bool, error) {
	switch b := v.(type) {
	case nil:
		return false, nil
	case bool:
		return b, nil
	case string:
		switch strings.ToLower(strings.TrimSpace(b)) {
		case "1", "true", "yes", "on":
			return true, nil
		case "", "0", "false", "no", "off":
			return false, nil
		}
	}
	return false, fmt.Errorf("%q is not a boolean (true/false)", fmt.Sprint(v))
}

func parsePrefixes(items []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range items {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32)", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// loadTLS returns a server TLS config, or nil when no certificate is set.
func loadTLS(cert, key string) (*tls.Config, error) {
	if cert == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// durationSetting reads key as a duration within lo..hi into *into; a
// value that is not one, or lies outside, is told to bad with the bounds.
func durationSetting(v *viper.Viper, bad func(key, format string, args ...any), key string, lo, hi time.Duration, into *time.Duration) {
	d, err := time.ParseDuration(v.GetString(key))
	if err != nil || d < lo || d > hi {
		bad(key, "%q is not a duration within %s..%s", v.GetString(key), durationBound(lo), durationBound(hi))
		return
	}
	*into = d
}

// durationBound says a bound as settings are written: 0, 1s, 5m, 24h.
func durationBound(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}
