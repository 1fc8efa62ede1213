package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/pgcluster"
)

// Cluster is N argus-server processes on one PostgreSQL, joined by their
// embedded NATS servers' routes, sharing one signing key.
type Cluster struct {
	Nodes []*Server
	Bin   string
	pg    *pgcluster.Cluster
	dir   string
}

// StartCluster starts a private PostgreSQL and n nodes on it.
func StartCluster(ctx context.Context, bin string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, errors.New("a cluster needs at least one node")
	}
	dir, err := os.MkdirTemp("", "argus-bench-cluster-")
	if err != nil {
		return nil, err
	}
	// PostgreSQL runs as its own user and must reach its directory.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	c := &Cluster{Bin: bin, dir: dir}
	c.pg, err = pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), Ephemeral: true})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := c.pg.EnsureDatabase(ctx, "argus"); err != nil {
		c.Close()
		return nil, err
	}
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	routes := make([]string, n)
	for i := range routes {
		if routes[i], err = freeAddr(); err != nil {
			c.Close()
			return nil, err
		}
	}
	for i := 0; i < n; i++ {
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, "nats-route://"+r)
			}
		}
		env := []string{
			"ARGUS_DATABASE_URL=" + c.pg.ConnString("argus"),
			"ARGUS_CLUSTER_SECRET=" + hex.EncodeToString(secret),
			"ARGUS_CLUSTER_LISTEN=" + routes[i],
			"ARGUS_CLUSTER_PEERS=" + strings.Join(peers, ","),
			// Every node signs with the key the agents pin.
			"ARGUS_COMMAND_SIGNING_KEY=" + filepath.Join(dir, "command-signing.key"),
			fmt.Sprintf("ARGUS_NODE_ID=bench-%d", i+1),
		}
		// One at a time: the first creates the signing key the others use.
		s, err := StartServerEnv(ctx, bin, env)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("node %d: %w", i+1, err)
		}
		c.Nodes = append(c.Nodes, s)
	}
	return c, nil
}

// Close stops every node and PostgreSQL and removes their files.
func (c *Cluster) Close() {
	for _, s := range c.Nodes {
		s.Stop()
		s.Cleanup()
	}
	if c.pg != nil {
		_ = c.pg.Stop(context.Background())
	}
	_ = os.RemoveAll(c.dir)
}

// Fleet prepares the tenant "bench" through the first node.
func (c *Cluster) Fleet(ctx context.Context) (*Fleet, error) {
	tok, err := c.Nodes[0].Operator(c.Bin, "bench")
	if err != nil {
		return nil, err
	}
	f := &Fleet{Server: c.Nodes[0], Bin: c.Bin, API: &apiclient.Client{BaseURL: c.Nodes[0].APIURL, Token: tok, OpsToken: OpsToken}}
	return f, f.prepareTenant(ctx)
}

// Connected sums argus_agents_connected over the nodes still running.
func (c *Cluster) Connected(skip *Server) (total int, per []int) {
	for _, s := range c.Nodes {
		if s == skip {
			per = append(per, 0)
			continue
		}
		v, _ := s.Metric("argus_agents_connected")
		per = append(per, int(v))
		total += int(v)
	}
	return total, per
}

// NodeFigures is one node's share of the fleet and what holding it costs.
type NodeFigures struct {
	Node           int     `json:"node"`
	Agents         int     `json:"agents"`
	RSSBaselineMiB float64 `json:"rss_baseline_mib"`
	RSSMiB         float64 `json:"rss_mib"`
	RSSPerAgentKiB float64 `json:"rss_per_agent_kib"`
}

// HolderFigures is one child harness process: its agents and the
// descriptor limit it ran under.
type HolderFigures struct {
	Agents  int    `json:"agents"`
	FDLimit uint64 `json:"fd_limit"`
}

// ClusterResult is what the cluster run measures.
type ClusterResult struct {
	Nodes   int    `json:"nodes"`
	Agents  int    `json:"agents"`
	Sources int    `json:"sources"`
	FDLimit uint64 `json:"fd_limit"`
	// Processes are the child harness processes holding agents, if any.
	Processes      []HolderFigures `json:"processes,omitempty"`
	ConnectRate    float64         `json:"connects_per_s"`
	HeldFor        string          `json:"held_for"`
	ConnectedAtEnd int             `json:"connected_at_end"`
	PerNode        []NodeFigures   `json:"per_node"`
	// Audited pings from the first node's API: to an agent held there,
	// and to one held by another node.
	SameNodePing  Quantiles `json:"same_node_ping"`
	CrossNodePing Quantiles `json:"cross_node_ping"`
	// The last node is killed with SIGKILL: when all its agents were back
	// on the others, and when a live session whose agent it held answered
	// again.
	KilledAgents   int    `json:"killed_agents,omitempty"`
	AllBackIn      string `json:"all_back_in,omitempty"`
	SessionBackIn  string `json:"session_back_in,omitempty"`
	SessionsEnded  int    `json:"sessions_ended,omitempty"`
	CrossNodeError string `json:"cross_node_error,omitempty"`
}

// ClusterOptions configure a cluster run.
type ClusterOptions struct {
	Nodes, Agents int
	// Sources is how many loopback source addresses each harness
	// process dials from.
	Sources int
	Hold    time.Duration
	Pings   int
	Kill    bool
	// Self is this harness's binary, run again as child processes
	// holding PerProcess agents each when Agents is more than that.
	Self       string
	PerProcess int
}

// ClusterRun holds the agents spread over an n-node cluster, measures
// each node, times audited pings within and across nodes, and, with
// Kill, kills the last node and times its agents' and its session's
// return.
func ClusterRun(ctx context.Context, bin string, o ClusterOptions) (ClusterResult, error) {
	n, m, sources, hold, pings, kill := o.Nodes, o.Agents, o.Sources, o.Hold, o.Pings, o.Kill
	if o.PerProcess <= 0 {
		o.PerProcess = DefaultAgentsPerProcess
	}
	r := ClusterResult{Nodes: n, Agents: m, Sources: sources, FDLimit: RaiseFDLimit(), HeldFor: hold.String()}
	c, err := StartCluster(ctx, bin, n)
	if err != nil {
		return r, err
	}
	defer c.Close()
	f, err := c.Fleet(ctx)
	if err != nil {
		return r, err
	}
	defer f.StopAgents()
	Settle(3 * time.Second)
	base := make([]int64, n)
	for i, s := range c.Nodes {
		if err := s.FreeOSMemory(); err != nil {
			return r, err
		}
		if base[i], err = s.RSS(); err != nil {
			return r, err
		}
	}
	states, err := f.Enroll(ctx, m, 32)
	if err != nil {
		return r, fmt.Errorf("enroll: %w", err)
	}
	// Spread round robin: agent i dials node i mod n, as a load balancer
	// in front would spread them.
	for i := range states {
		states[i].BrokerURL = c.Nodes[i%n].MQTTURL
	}
	start := time.Now()
	if m <= o.PerProcess || o.Self == "" {
		if _, _, err := f.Connect(ctx, states, sources, 512); err != nil {
			return r, err
		}
	} else {
		// Shares of PerProcess agents, each from its own source addresses;
		// the first n agents stay here, for the pings.
		if _, _, err := f.Connect(ctx, states[:n], 1, n); err != nil {
			return r, err
		}
		for k, lo := 0, n; lo < m; k, lo = k+1, lo+o.PerProcess {
			hi := min(lo+o.PerProcess, m)
			h, rep, err := spawnHolder(ctx, o.Self, states[lo:hi], sources, 1+(k+1)*sources)
			if err != nil {
				return r, err
			}
			defer h.stop()
			r.Processes = append(r.Processes, HolderFigures{Agents: rep.Connected, FDLimit: rep.FDLimit})
		}
	}
	r.ConnectRate = float64(m) / time.Since(start).Seconds()
	Settle(10 * time.Second)
	if hold > 0 {
		time.Sleep(hold)
	}
	var per []int
	r.ConnectedAtEnd, per = c.Connected(nil)
	for i, s := range c.Nodes {
		// What the node holds live: enrolling through node 1 leaves it
		// garbage the others do not have.
		if err := s.FreeOSMemory(); err != nil {
			return r, err
		}
		rss, err := s.RSS()
		if err != nil {
			return r, err
		}
		nf := NodeFigures{Node: i + 1, Agents: per[i], RSSBaselineMiB: float64(base[i]) / (1 << 20), RSSMiB: float64(rss) / (1 << 20)}
		if per[i] > 0 {
			nf.RSSPerAgentKiB = float64(rss-base[i]) / float64(per[i]) / 1024
		}
		r.PerNode = append(r.PerNode, nf)
	}
	if n < 2 || m < n {
		return r, nil
	}
	// Agent 0 is on node 1 (the API's node), agent n-1 on the last node.
	same, err := f.openSession(ctx, states[0].AgentID)
	if err != nil {
		return r, fmt.Errorf("session on node 1: %w", err)
	}
	if r.SameNodePing, err = f.pings(ctx, same, pings); err != nil {
		return r, fmt.Errorf("same-node pings: %w", err)
	}
	cross, err := f.openSession(ctx, states[n-1].AgentID)
	if err == nil {
		r.CrossNodePing, err = f.pings(ctx, cross, pings)
	}
	if err != nil {
		// Reported, not fatal: the node figures stand on their own.
		r.CrossNodeError = err.Error()
		return r, nil
	}
	if !kill {
		return r, nil
	}
	victim := c.Nodes[n-1]
	r.KilledAgents = per[n-1]
	victim.Kill()
	start = time.Now()
	for {
		got, _ := c.Connected(victim)
		if got >= m {
			r.AllBackIn = time.Since(start).Round(time.Millisecond).String()
			break
		}
		if time.Since(start) > 5*time.Minute {
			return r, fmt.Errorf("only %d of %d agents back after 5 minutes", got, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		if _, err := cross.ping(ctx); err == nil {
			r.SessionBackIn = time.Since(start).Round(time.Millisecond).String()
			break
		}
		if time.Since(start) > 2*time.Minute {
			return r, errors.New("the moved agent's session did not answer within 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, id := range []string{same.id, cross.id} {
		var s apiclient.Session
		if err := f.API.Do(ctx, "GET", "/v1/support/sessions/"+id, nil, &s); err != nil {
			return r, err
		}
		if !s.Active {
			r.SessionsEnded++
		}
	}
	return r, nil
}
