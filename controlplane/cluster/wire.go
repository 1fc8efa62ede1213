package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const (
	// nodeUser is the user every node's own connection authenticates as
	// on an embedded NATS server; routes authenticate as routeUser. Both
	// use the cluster's secret, so a node of another cluster (another
	// secret) or one without it is refused.
	nodeUser  = "argus-node"
	routeUser = "argus-route"
)

// WireConfig says how a node reaches the others.
type WireConfig struct {
	// Name is the cluster's name: its NATS subjects are argus.<Name>.>,
	// and an embedded server routes only to servers of that name.
	Name   string
	NodeID string
	// Secret authenticates routes and connections to the embedded server.
	Secret string
	// Listen is the embedded server's route address (host:port); empty
	// means no routes: a cluster of one.
	Listen string
	// Peers are the other nodes' route addresses (host:port).
	Peers []string
	// URLs, when set, are an external NATS to connect to instead of
	// running an embedded server; Creds is its credentials file (user
	// JWT and nkey seed) and CAFile the CA its TLS certificate is checked
	// against, when set.
	URLs   []string
	Creds  string
	CAFile string
	// DropBroadcasts loses every broadcast this node sends (tests of the
	// sweep that repairs a lost one).
	DropBroadcasts bool
	Log            *slog.Logger
}

// Wire is a node's connection to the other nodes.
type Wire struct {
	cfg     WireConfig
	prefix  string
	ns      *natsserver.Server
	nc      *nats.Conn
	log     *slog.Logger
	dropped atomic.Int64
}

// Connect starts the embedded NATS server (unless an external one is
// configured) and connects to it. Its subjects are limited to the
// cluster's own.
func Connect(ctx context.Context, cfg WireConfig) (*Wire, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("cluster name %q: use letters, digits, - and _", cfg.Name)
	}
	w := &Wire{cfg: cfg, prefix: "argus." + cfg.Name, log: log}
	opts := []nats.Option{
		nats.Name("argus-server " + cfg.NodeID),
		// A node hears the others, never its own broadcasts.
		nats.NoEcho(),
		// Replies come back under the cluster's subjects too, so a node's
		// permissions need nothing else.
		nats.CustomInboxPrefix(w.prefix + "._INBOX"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("cluster: NATS connection lost", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("cluster: NATS connection back") }),
	}
	url := ""
	if len(cfg.URLs) > 0 {
		url = strings.Join(cfg.URLs, ",")
		if cfg.Creds != "" {
			opts = append(opts, nats.UserCredentials(cfg.Creds))
		}
		if cfg.CAFile != "" {
			opts = append(opts, nats.RootCAs(cfg.CAFile))
		}
	} else {
		if cfg.Secret == "" {
			return nil, errors.New("cluster: an embedded NATS server needs the cluster secret")
		}
		ns, err := w.startEmbedded()
		if err != nil {
			return nil, err
		}
		w.ns = ns
		opts = append(opts, nats.InProcessServer(ns), nats.UserInfo(nodeUser, cfg.Secret))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("cluster: connect to NATS: %w", err)
	}
	w.nc = nc
	if nc.MaxPayload() < MaxPayload {
		w.Close()
		return nil, fmt.Errorf("cluster: NATS max_payload is %d bytes; a command's result needs %d: set max_payload: %d in its configuration", nc.MaxPayload(), MaxPayload, MaxPayload)
	}
	return w, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (w *Wire) startEmbedded() (*natsserver.Server, error) {
	cfg := w.cfg
	perms := &natsserver.Permissions{
		Publish:   &natsserver.SubjectPermission{Allow: []string{w.prefix + ".>"}},
		Subscribe: &natsserver.SubjectPermission{Allow: []string{w.prefix + ".>"}},
	}
	o := &natsserver.Options{
		ServerName: cfg.NodeID,
		NoSigs:     true,
		NoLog:      true,
		Users:      []*natsserver.User{{Username: nodeUser, Password: cfg.Secret, Permissions: perms}},
		// A cluster of one listens to no one; the node's own connection
		// is in-process.
		DontListen: cfg.Listen == "",
		// One delivery carries a whole result (route.go says why).
		MaxPayload: MaxPayload,
	}
	if cfg.Listen != "" {
		host, port, err := splitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("cluster-listen %q: %w", cfg.Listen, err)
		}
		// Routing starts only once a client listener is up: it listens on
		// loopback only, and only the cluster's secret opens it.
		o.Host, o.Port = "127.0.0.1", natsserver.RANDOM_PORT
		o.Cluster = natsserver.ClusterOpts{
			Name: cfg.Name, Host: host, Port: port,
			Username: routeUser, Password: cfg.Secret,
			// A lost peer is retried for ever: it may be restarting.
			ConnectRetries: -1,
		}
		var peers []string
		for _, p := range cfg.Peers {
			if p == "" {
				continue
			}
			if !strings.Contains(p, "://") {
				p = "nats://" + p
			}
			// Routes authenticate with the cluster's own credentials.
			p = strings.Replace(p, "://", "://"+routeUser+":"+cfg.Secret+"@", 1)
			peers = append(peers, p)
		}
		o.Routes = natsserver.RoutesFromStr(strings.Join(peers, ","))
	}
	ns, err := natsserver.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("cluster: NATS server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("cluster: the embedded NATS server did not start (is cluster-listen free?)")
	}
	return ns, nil
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if port == 0 {
		port = natsserver.RANDOM_PORT
	}
	return host, port, nil
}

// Subject is the cluster subject made of parts.
func (w *Wire) Subject(parts ...string) string {
	return w.prefix + "." + strings.Join(parts, ".")
}

// Conn is the node's NATS connection.
func (w *Wire) Conn() *nats.Conn { return w.nc }

// RouteAddr is the embedded server's bound route address, if it routes.
func (w *Wire) RouteAddr() string {
	if w.ns == nil {
		return ""
	}
	if a := w.ns.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Peers names the servers the embedded server is routed to now (each
// peer over several pooled connections counts once).
func (w *Wire) Peers() []string {
	if w.ns == nil {
		return nil
	}
	rz, err := w.ns.Routez(&natsserver.RoutezOptions{})
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range rz.Routes {
		if !seen[r.RemoteName] {
			seen[r.RemoteName] = true
			out = append(out, r.RemoteName)
		}
	}
	sort.Strings(out)
	return out
}

// Close drains the connection and stops the embedded server.
func (w *Wire) Close() {
	if w.nc != nil {
		_ = w.nc.Drain()
		w.nc.Close()
	}
	if w.ns != nil {
		w.ns.Shutdown()
		w.ns.WaitForShutdown()
	}
}

// Change is a committed change every node applies to what it holds. It
// carries nothing that is not already decided in PostgreSQL: a node that
// misses one finds the change there at its next sweep.
type Change struct {
	Kind      string   `json:"kind"`
	SessionID string   `json:"session_id,omitempty"`
	AgentID   string   `json:"agent_id,omitempty"`
	TenantID  string   `json:"tenant_id,omitempty"`
	TokenIDs  []string `json:"token_ids,omitempty"`
	From      string   `json:"from"`
}

// Kinds of change.
const (
	SessionEnded         = "session_ended"
	AgentRevoked         = "agent_revoked"
	MonitorTokensRevoked = "monitor_tokens_revoked"
	ViewerTokensRevoked  = "viewer_tokens_revoked"
	maxChangeSize        = 64 << 10
	changesSubject       = "changes"
)

// Broadcast tells every other node of a committed change. A failure is
// logged, not returned: the change is committed, and the others' sweep
// finds it.
func (w *Wire) Broadcast(c Change) {
	if w == nil {
		return
	}
	if w.cfg.DropBroadcasts {
		w.dropped.Add(1)
		return
	}
	c.From = w.cfg.NodeID
	b, err := json.Marshal(c)
	if err == nil {
		err = w.nc.Publish(w.Subject(changesSubject), b)
	}
	if err != nil {
		w.log.Warn("cluster: broadcast lost; the others' sweep repairs it", "kind", c.Kind, "err", err)
	}
}

// OnChange calls apply for every change another node broadcasts.
func (w *Wire) OnChange(apply func(Change)) error {
	_, err := w.nc.Subscribe(w.Subject(changesSubject), func(m *nats.Msg) {
		if len(m.Data) > maxChangeSize {
			return
		}
		var c Change
		if err := json.Unmarshal(m.Data, &c); err != nil {
			w.log.Warn("cluster: unreadable change", "err", err)
			return
		}
		apply(c)
	})
	if err != nil {
		return fmt.Errorf("cluster: subscribe to changes: %w", err)
	}
	return w.nc.Flush()
}

// Ping answers other nodes' reachability checks.
func (w *Wire) AnswerPings() error {
	_, err := w.nc.Subscribe(w.Subject("node", w.cfg.NodeID, "ping"), func(m *nats.Msg) {
		_ = m.Respond([]byte(w.cfg.NodeID))
	})
	return err
}

// Reachable reports whether node answers over NATS within timeout.
func (w *Wire) Reachable(ctx context.Context, node string, timeout time.Duration) bool {
	if node == w.cfg.NodeID {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := w.nc.RequestWithContext(ctx, w.Subject("node", node, "ping"), nil)
	return err == nil && string(m.Data) == node
}
