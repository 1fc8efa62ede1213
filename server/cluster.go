package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/spf13/viper"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/api"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/topics"
)

// ClusterConfig says how this node reaches the other nodes.
type ClusterConfig struct {
	// Name is the cluster's name (its NATS subjects are argus.<name>.>).
	Name string
	// Secret authenticates the nodes to each other (an embedded NATS
	// server's routes and connections).
	Secret string
	// Listen and Peers: the embedded NATS server's route address and the
	// other nodes' route addresses.
	Listen string
	Peers  []string
	// NATSURLs, NATSCreds, NATSCAFile: an external NATS instead.
	NATSURLs   []string
	NATSCreds  string
	NATSCAFile string
	// Lease is how long a renewed lease lasts; a node that cannot renew
	// it for that long fences itself.
	Lease time.Duration
	// DrainDelay is how long a draining node keeps answering its API
	// after /readyz starts failing, so the load balancer has seen it
	// (HAProxy's checks: inter × fall) before its listener closes.
	DrainDelay time.Duration
	// DrainTimeout bounds how long a draining node waits for the commands
	// in flight on it to finish before it sends their agents away anyway
	// (each then ends as a command whose agent disconnects does).
	DrainTimeout time.Duration
	// HandoverTimeout bounds the wait, once a draining node has sent its
	// agents away, for the other nodes to record them (an agent that does
	// not reconnect at all must not hold the node up).
	HandoverTimeout time.Duration
	// DrainEvictRate is how many agents a second a draining node sends
	// away (0: all at once): the nodes they go to must take in their
	// handshakes, and ones that cannot time them out.
	DrainEvictRate int
	// StatusResync is how often a node sends the others again the
	// retained status it holds as its own last word, repairing one lost
	// on the way.
	StatusResync time.Duration
	// DropBroadcasts loses every broadcast (tests of the sweep), from
	// ARGUS_TEST_DROP_BROADCASTS=1.
	DropBroadcasts bool
	// DropStatus loses every retained status message this node sends the
	// others as it publishes it (tests of the status re-sync), from
	// ARGUS_TEST_DROP_STATUS=1.
	DropStatus bool
}

// Multi reports whether other nodes may exist: routes or an external NATS
// are configured. A node alone has nowhere to send its agents.
func (c ClusterConfig) Multi() bool { return c.Listen != "" || len(c.NATSURLs) > 0 }

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// ValidNodeID reports whether id can name a node (a NATS subject token).
func ValidNodeID(id string) bool { return nodeIDPattern.MatchString(id) }

func clusterFromViper(v *viper.Viper, c Config, bad func(key, format string, args ...any)) ClusterConfig {
	cc := ClusterConfig{
		Name:       v.GetString("cluster-name"),
		Secret:     v.GetString("cluster-secret"),
		Listen:     v.GetString("cluster-listen"),
		Peers:      settings.List(v, "cluster-peers"),
		NATSURLs:   settings.List(v, "cluster-nats-url"),
		NATSCreds:  v.GetString("cluster-nats-creds"),
		NATSCAFile: v.GetString("cluster-nats-ca-file"),
		// A test switch, not a setting: it is read from the environment
		// only.
		DropBroadcasts: os.Getenv("ARGUS_TEST_DROP_BROADCASTS") == "1",
		DropStatus:     os.Getenv("ARGUS_TEST_DROP_STATUS") == "1",
	}
	if f := v.GetString("cluster-secret-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			bad("cluster-secret-file", "%v", err)
		}
		cc.Secret = strings.TrimSpace(string(b))
	}
	durationSetting(v, bad, "cluster-lease", 2*time.Second, 5*time.Minute, &cc.Lease)
	durationSetting(v, bad, "cluster-drain-delay", 0, time.Minute, &cc.DrainDelay)
	// Up to the longest a command may be given (command-timeout's bound):
	// a drain need never wait longer than the commands it waits for.
	durationSetting(v, bad, "cluster-drain-timeout", 0, 10*time.Minute, &cc.DrainTimeout)
	durationSetting(v, bad, "cluster-drain-handover-timeout", 0, 5*time.Minute, &cc.HandoverTimeout)
	if n, err := strconv.Atoi(v.GetString("cluster-drain-evict-rate")); err != nil || n < 0 || n > 1_000_000 {
		bad("cluster-drain-evict-rate", "%q is not a number of agents a second within 0..1000000", v.GetString("cluster-drain-evict-rate"))
	} else {
		cc.DrainEvictRate = n
	}
	durationSetting(v, bad, "cluster-status-resync", time.Second, 10*time.Minute, &cc.StatusResync)
	if cc.Listen != "" && len(cc.NATSURLs) > 0 {
		bad("cluster-listen", "an embedded NATS (cluster-listen) and an external one (cluster-nats-url) exclude each other")
	}
	if len(cc.Peers) > 0 && cc.Listen == "" {
		bad("cluster-peers", "peers are routes of the embedded NATS server: set cluster-listen too")
	}
	if cc.Listen != "" && len(cc.Secret) < 32 {
		bad("cluster-secret", "a cluster's nodes authenticate to each other with a shared secret of at least 32 characters")
	}
	if cc.Multi() && c.DatabaseURL == "" {
		bad("database-url", "a cluster's nodes share one PostgreSQL: set database-url")
	}
	return cc
}

// nodeIDFile keeps a node's generated id in its data dir.
const nodeIDFile = "node-id"

// ResolveNodeID returns the configured node id, or the one kept in the
// data dir, made (host name and a random suffix) on first use.
func (c *Config) ResolveNodeID() error {
	if c.NodeID != "" {
		return nil
	}
	if c.DataDir == "" {
		return errors.New("node-id: set one, or a data-dir to keep a generated one in")
	}
	path := filepath.Join(c.DataDir, nodeIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !ValidNodeID(id) {
			return fmt.Errorf("node-id: %s holds %q, not a node id", path, id)
		}
		c.NodeID = id
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("node-id: %w", err)
	}
	id := generatedNodeID()
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("node-id: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return c.ResolveNodeID() // made meanwhile by another start
	}
	if err != nil {
		return fmt.Errorf("node-id: %w", err)
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("node-id: %w", err)
	}
	c.NodeID = id
	return nil
}

func generatedNodeID() string {
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	var b strings.Builder
	for _, r := range host {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			b.WriteRune(r)
		}
		if b.Len() >= 40 {
			break
		}
	}
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	if b.Len() == 0 || !ValidNodeID(b.String()) {
		return "node-" + hex.EncodeToString(suffix)
	}
	return b.String() + "-" + hex.EncodeToString(suffix)
}

// joinCluster connects the node to the others and takes its lease. A
// node alone runs the same code: its NATS server is in-process, with a
// secret of its own.
func (s *Server) joinCluster(ctx context.Context) error {
	cc := s.cfg.Cluster
	secret := cc.Secret
	if secret == "" && !cc.Multi() {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		secret = hex.EncodeToString(b)
	}
	wire, err := cluster.Connect(ctx, cluster.WireConfig{
		Name: cc.Name, NodeID: s.cfg.NodeID, Secret: secret, Listen: cc.Listen, Peers: cc.Peers,
		URLs: cc.NATSURLs, Creds: cc.NATSCreds, CAFile: cc.NATSCAFile, DropBroadcasts: cc.DropBroadcasts,
		Log: s.log.With("component", "cluster"),
	})
	if err != nil {
		return err
	}
	s.wire.Store(wire)
	if err := wire.OnChange(s.applyChange); err != nil {
		return err
	}
	if err := wire.AnswerPings(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := s.status.Attach(wire); err != nil {
		return fmt.Errorf("cluster: status: %w", err)
	}
	// Commands and activations for agents held here, decided and audited
	// by whichever node the operator called.
	if err := wire.ServeDeliveries(s.sessions.ServeDelivery); err != nil {
		return err
	}
	s.members = cluster.NewMembership(s.db.Pool, cluster.Self{
		ID: s.cfg.NodeID, APIURL: s.APIURL(), MQTTURL: s.broker.URL(), Version: api.Version,
	}, cc.Lease, cc.Lease/5, s.log.With("component", "cluster"))
	s.members.OnFence = s.fence
	s.members.OnUnfence = s.unfence
	if err := s.members.Join(ctx); err != nil {
		return err
	}
	mctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopMembers, s.membersDone = stop, make(chan struct{})
	repaired := make(chan struct{})
	go func() { defer close(repaired); s.status.Run(mctx, s.db.Pool, 500*time.Millisecond) }()
	go func() { defer close(s.membersDone); s.members.Run(mctx); <-repaired }()
	if cc.Multi() {
		s.log.Info("cluster joined", "node", s.cfg.NodeID, "cluster", cc.Name, "routes", wire.RouteAddr())
	}
	return nil
}

// fence stops this node from serving agents: it delivers nothing (the
// session manager asks Fenced) and fails readiness. In a cluster it also
// sends its agents and watchers to the other nodes, and refuses new ones,
// until its lease is back; alone, it has nowhere to send them.
func (s *Server) fence() {
	s.fleet.SetFenced(true) // the others clear its presence: it must not write it back
	s.sendAway("fenced")
}

func (s *Server) unfence() {
	s.fleet.SetFenced(false)
	s.takeBack()
}

// keysUsable follows the signing ring: a node holding no live key's file
// signs nothing agents accept, so in a cluster it sends its agents to the
// nodes that can, and takes them back once the file is there.
func (s *Server) keysUsable(usable bool) {
	if usable {
		s.takeBack()
		return
	}
	s.sendAway("no live signing key")
}

// sendAway refuses new agent connections and sends this node's clients
// to another server (MQTT v5 0x9C). Alone, a node has nowhere to send
// them.
func (s *Server) sendAway(why string) {
	if !s.cfg.Cluster.Multi() {
		return
	}
	s.broker.Redirect(true)
	n := s.broker.DisconnectAll(packets.ErrUseAnotherServer)
	s.log.Warn("cluster: node sent its clients to another server", "why", why, "clients", n)
}

// takeBack accepts agent connections again, once the node is neither
// fenced nor without a live signing key.
func (s *Server) takeBack() {
	if s.Fenced() || s.ring.Usable() != nil {
		return
	}
	s.broker.Redirect(false)
}

// Wire is this node's connection to the others.
func (s *Server) Wire() *cluster.Wire { return s.wire.Load() }

// Fenced reports whether this node holds no valid lease.
func (s *Server) Fenced() bool { return s.members != nil && s.members.Fenced() }

// applyChange applies on this node what another node committed.
func (s *Server) applyChange(c cluster.Change) {
	switch c.Kind {
	case cluster.SessionEnded:
		s.sessions.ApplyEnded(sessions.Ended{ID: c.SessionID, TenantID: c.TenantID, AgentID: c.AgentID})
	case cluster.AgentRevoked:
		s.control.revokeHere(c.AgentID)
	case cluster.MonitorTokensRevoked:
		s.control.disconnectMonitorsHere(c.TokenIDs...)
	case cluster.ViewerTokensRevoked:
		s.control.disconnectViewerTokensHere(c.TokenIDs...)
	default:
		s.log.Debug("cluster: unknown change", "kind", c.Kind, "from", c.From)
	}
}

// broadcastEnded tells the other nodes of ends this node committed.
func (s *Server) broadcastEnded(ended []sessions.Ended) {
	for _, e := range ended {
		s.wire.Load().Broadcast(cluster.Change{Kind: cluster.SessionEnded, SessionID: e.ID, TenantID: e.TenantID, AgentID: e.AgentID})
	}
}

// clusterNodes is the cluster as the server summary shows it: every
// node's row with the agents it holds, and their sum. A database hiccup
// leaves the list empty for one summary, not the summary unsent.
func (s *Server) clusterNodes(ctx context.Context) ([]cluster.Node, int) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	nodes, err := cluster.Nodes(ctx, s.db.Pool)
	if err != nil {
		s.log.Warn("server summary: cluster nodes", "err", err)
		return []cluster.Node{}, 0
	}
	total := 0
	for i := range nodes {
		nodes[i].ThisNode = nodes[i].ID == s.cfg.NodeID
		total += nodes[i].AgentsHeld
	}
	return nodes, total
}

// agentStale reports an agent connected but silent, wherever it is
// connected: this node's fleet knows its own agents; the others' are as
// their holders last said on their status topics.
func (s *Server) agentStale(agentID string) bool {
	if s.fleet.Online(agentID) {
		stale, _ := s.fleet.Stale(agentID)
		return stale
	}
	id, err := topics.ParseAgentID(agentID)
	if err != nil {
		return false
	}
	b, ok := s.status.Held(id.Status())
	if !ok {
		return false
	}
	var st topics.AgentStatusMsg
	return json.Unmarshal(b, &st) == nil && st.Online && st.Stale
}

// router takes the sessions to the node holding an agent: where the
// record says it is connected, and the wire to that node.
type router struct {
	store *agents.Store
	wire  func() *cluster.Wire
	multi bool
	node  string
}

func (r router) NodeID() string { return r.node }

func (r router) Multi() bool { return r.multi }

func (r router) Holder(ctx context.Context, agentID string) (string, bool, error) {
	p, ok, err := r.store.PresenceOf(ctx, agentID)
	return p.NodeID, ok, err
}

func (r router) Deliver(ctx context.Context, node string, d cluster.Delivery) (cluster.Answer, error) {
	w := r.wire()
	if w == nil {
		// Not joined yet (or left): no one can be reached.
		return cluster.Answer{}, cluster.ErrNoResponder
	}
	return w.Deliver(ctx, node, d)
}
