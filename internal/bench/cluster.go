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
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/argus-remote/argus/agent"
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
	// FDs is how many descriptors the node had open at the end of the hold.
	FDs int `json:"fds"`
}

// HolderFigures is one child harness process: its agents and the
// descriptor limit it ran under.
type HolderFigures struct {
	Agents  int    `json:"agents"`
	FDLimit uint64 `json:"fd_limit"`
}

// RollingFigures is a rolling restart under steady audited pings.
type RollingFigures struct {
	// Steps is each node's drain, restart and its agents being back.
	Steps []string `json:"steps"`
	Total string   `json:"total"`
	// Commands are the audited pings sent meanwhile, each through a node
	// not being restarted, as a load balancer in front would send them.
	Commands int      `json:"commands"`
	Failed   int      `json:"failed"`
	Errors   []string `json:"errors,omitempty"`
}

// ClusterResult is what the cluster run measures.
type ClusterResult struct {
	Nodes   int    `json:"nodes"`
	Agents  int    `json:"agents"`
	Sources int    `json:"sources"`
	FDLimit uint64 `json:"fd_limit"`
	// AnyNode: every agent was given every node's URL, in its own random
	// order, rather than one node each.
	AnyNode bool `json:"any_node"`
	// Processes are the child harness processes holding agents, if any.
	Processes      []HolderFigures `json:"processes,omitempty"`
	ConnectRate    float64         `json:"connects_per_s"`
	HeldFor        string          `json:"held_for"`
	ConnectedAtEnd int             `json:"connected_at_end"`
	PerNode        []NodeFigures   `json:"per_node"`
	// Audited pings from the first node's API: to an agent held there,
	// and to one held by the last node.
	SameNodePing  Quantiles `json:"same_node_ping"`
	CrossNodePing Quantiles `json:"cross_node_ping"`
	// The last node is killed with SIGKILL: when all its agents were back
	// on the others, and when every live session whose agent it held
	// answered again.
	KilledAgents   int             `json:"killed_agents,omitempty"`
	KilledSessions int             `json:"killed_sessions,omitempty"`
	AllBackIn      string          `json:"all_back_in,omitempty"`
	SessionBackIn  string          `json:"session_back_in,omitempty"`
	SessionsEnded  int             `json:"sessions_ended,omitempty"`
	Rolling        *RollingFigures `json:"rolling,omitempty"`
	CrossNodeError string          `json:"cross_node_error,omitempty"`
	// Where the cores went while the agents were idle, and during each
	// run of pings.
	IdleCPU      *CPUFigures `json:"idle_cpu,omitempty"`
	SamePingCPU  *CPUFigures `json:"same_node_ping_cpu,omitempty"`
	CrossPingCPU *CPUFigures `json:"cross_node_ping_cpu,omitempty"`
}

// ClusterOptions configure a cluster run.
type ClusterOptions struct {
	Nodes, Agents int
	// Sources is how many loopback source addresses each harness
	// process dials from.
	Sources int
	Hold    time.Duration
	Pings   int
	// AnyNode gives every agent every node's URL (Kill and Rolling need
	// it: the agents must have somewhere to go).
	AnyNode bool
	// Sessions is how many live sessions Kill and Rolling keep (Kill's
	// on the killed node's agents).
	Sessions int
	Kill     bool
	Rolling  bool
	// Self is this harness's binary, run again as child processes
	// holding PerProcess agents each when Agents is more than that.
	Self       string
	PerProcess int
	// ProfileDir, when set, receives CPU profiles of every node taken
	// over the first seconds of each run of pings.
	ProfileDir string
}

// ClusterRun holds the agents spread over an n-node cluster, measures
// each node, times audited pings within and across nodes, and, with
// Kill, kills the last node and times its agents' and its sessions'
// return; with Rolling, drains and restarts each node in turn under
// audited pings.
func ClusterRun(ctx context.Context, bin string, o ClusterOptions) (ClusterResult, error) {
	n, m, sources, hold := o.Nodes, o.Agents, o.Sources, o.Hold
	if o.PerProcess <= 0 {
		o.PerProcess = DefaultAgentsPerProcess
	}
	o.AnyNode = o.AnyNode || o.Kill || o.Rolling
	o.Sessions = max(o.Sessions, 1)
	r := ClusterResult{Nodes: n, Agents: m, Sources: sources, FDLimit: RaiseFDLimit(), HeldFor: hold.String(), AnyNode: o.AnyNode}
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
	// in front would spread them; or every agent knows every node.
	for i := range states {
		states[i].BrokerURL = c.Nodes[i%n].MQTTURL
	}
	if o.AnyNode {
		for _, s := range c.Nodes {
			f.BrokerURLs = append(f.BrokerURLs, s.MQTTURL)
		}
	}
	// The first agents stay in this process, for the sessions; with
	// every node's URL, enough that each node holds some of them.
	local := n
	if o.AnyNode {
		local = 4 * n * o.Sessions
	}
	local = min(local, m)
	meter := cpuMeter{harness: []int{os.Getpid()}}
	for _, s := range c.Nodes {
		meter.nodes = append(meter.nodes, s.PID())
	}
	start := time.Now()
	if m <= o.PerProcess || o.Self == "" {
		if _, _, err := f.Connect(ctx, states, sources, 512); err != nil {
			return r, err
		}
	} else {
		// Shares of PerProcess agents, each from its own source addresses.
		if _, _, err := f.Connect(ctx, states[:local], 1, local); err != nil {
			return r, err
		}
		for k, lo := 0, local; lo < m; k, lo = k+1, lo+o.PerProcess {
			hi := min(lo+o.PerProcess, m)
			h, rep, err := spawnHolder(ctx, o.Self, states[lo:hi], sources, 1+(k+1)*sources, f.BrokerURLs)
			if err != nil {
				return r, err
			}
			defer h.stop()
			meter.harness = append(meter.harness, h.cmd.Process.Pid)
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
		nf := NodeFigures{Node: i + 1, Agents: per[i], RSSBaselineMiB: float64(base[i]) / (1 << 20), RSSMiB: float64(rss) / (1 << 20), FDs: s.FDs()}
		if per[i] > 0 {
			nf.RSSPerAgentKiB = float64(rss-base[i]) / float64(per[i]) / 1024
		}
		r.PerNode = append(r.PerNode, nf)
	}
	if n < 2 || m < n {
		return r, nil
	}
	// Which node holds each of the local agents.
	byNode := make([][]string, n)
	if o.AnyNode {
		held, err := c.holders(ctx, states[:local])
		if err != nil {
			return r, err
		}
		for i, st := range states[:local] {
			if k := held[i]; k >= 0 {
				byNode[k] = append(byNode[k], st.AgentID)
			}
		}
	} else {
		for i, st := range states[:local] {
			byNode[i%n] = append(byNode[i%n], st.AgentID)
		}
	}
	if len(byNode[0]) == 0 || len(byNode[n-1]) == 0 {
		return r, fmt.Errorf("no local agent on node 1 or node %d: %d and %d of %d", n, len(byNode[0]), len(byNode[n-1]), local)
	}
	if r.IdleCPU, err = meter.over(idleWindow); err != nil {
		return r, err
	}
	same, err := f.openSession(ctx, byNode[0][0])
	if err != nil {
		return r, fmt.Errorf("session on node 1: %w", err)
	}
	r.SameNodePing, r.SamePingCPU, err = c.measuredPings(ctx, f, same, o, meter, "same")
	if err != nil {
		return r, fmt.Errorf("same-node pings: %w", err)
	}
	cross, err := f.openSession(ctx, byNode[n-1][0])
	if err == nil {
		r.CrossNodePing, r.CrossPingCPU, err = c.measuredPings(ctx, f, cross, o, meter, "cross")
	}
	if err != nil {
		// Reported, not fatal: the node figures stand on their own.
		r.CrossNodeError = err.Error()
		return r, nil
	}
	switch {
	case o.Kill:
		err = c.killRun(ctx, f, &r, per[n-1], append([]*session{cross}, f.moreSessions(ctx, byNode[n-1][1:], o.Sessions-1)...), m)
		if err == nil {
			err = f.countEnded(ctx, &r, same)
		}
	case o.Rolling:
		// same and cross hold the first agent of nodes 1 and n.
		ss := []*session{same, cross}
		for k := 1; len(ss) < o.Sessions; k++ {
			added := false
			for i := range byNode {
				if k < len(byNode[i]) && len(ss) < o.Sessions {
					s, err := f.openSession(ctx, byNode[i][k])
					if err != nil {
						return r, err
					}
					ss, added = append(ss, s), true
				}
			}
			if !added {
				break
			}
		}
		err = c.rollingRun(ctx, &r, ss, m)
		if err == nil {
			err = f.countEnded(ctx, &r, ss...)
		}
	}
	return r, err
}

// idleWindow is how long the idle fleet's CPU is measured.
const idleWindow = 5 * time.Second

// over measures the CPU used over the next d.
func (m cpuMeter) over(d time.Duration) (*CPUFigures, error) {
	from := m.read()
	time.Sleep(d)
	f, err := m.read().since(from)
	return &f, err
}

// profileWindow is the length of each CPU profile taken during pings.
const profileWindow = 3 * time.Second

// measuredPings times o.Pings audited pings in s, measuring the CPU they
// take and, with o.ProfileDir, profiling every node as they run.
func (c *Cluster) measuredPings(ctx context.Context, f *Fleet, s *session, o ClusterOptions, meter cpuMeter, name string) (Quantiles, *CPUFigures, error) {
	var wg sync.WaitGroup
	if o.ProfileDir != "" {
		for k := range c.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := filepath.Join(o.ProfileDir, fmt.Sprintf("%s-pings-node%d.cpu.pprof", name, k+1))
				if err := profileCPU(ctx, c.Nodes[k], profileWindow, path); err != nil {
					fmt.Fprintln(os.Stderr, "argus-bench:", err)
				}
			}()
		}
	}
	from := meter.read()
	q, err := f.pings(ctx, s, o.Pings)
	cpu, cerr := meter.read().since(from)
	wg.Wait()
	return q, &cpu, errors.Join(err, cerr)
}

// moreSessions opens sessions on up to k of ids.
func (f *Fleet) moreSessions(ctx context.Context, ids []string, k int) []*session {
	var ss []*session
	for _, id := range ids[:min(k, len(ids))] {
		if s, err := f.openSession(ctx, id); err == nil {
			ss = append(ss, s)
		}
	}
	return ss
}

// countEnded counts the sessions no longer active.
func (f *Fleet) countEnded(ctx context.Context, r *ClusterResult, ss ...*session) error {
	for _, s := range ss {
		var got apiclient.Session
		if err := f.API.Do(ctx, "GET", "/v1/support/sessions/"+s.id, nil, &got); err != nil {
			return err
		}
		if !got.Active {
			r.SessionsEnded++
		}
	}
	return nil
}

// killRun kills the last node and times its agents' return to the others
// and every session whose agent it held answering again.
func (c *Cluster) killRun(ctx context.Context, f *Fleet, r *ClusterResult, held int, ss []*session, m int) error {
	victim := c.Nodes[len(c.Nodes)-1]
	r.KilledAgents, r.KilledSessions = held, len(ss)
	victim.Kill()
	start := time.Now()
	for {
		got, _ := c.Connected(victim)
		if got >= m {
			r.AllBackIn = time.Since(start).Round(time.Millisecond).String()
			break
		}
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("only %d of %d agents back after 5 minutes", got, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range ss {
		for {
			if _, err := s.ping(ctx); err == nil {
				break
			}
			if time.Since(start) > 2*time.Minute {
				return errors.New("a moved agent's session did not answer within 2 minutes")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	r.SessionBackIn = time.Since(start).Round(time.Millisecond).String()
	return nil
}

// rollingRun drains (SIGTERM) and restarts each node in turn, waiting
// for every agent to be held again before the next, while audited pings
// go round the sessions through a node that is not being restarted.
func (c *Cluster) rollingRun(ctx context.Context, r *ClusterResult, ss []*session, m int) error {
	rf := &RollingFigures{}
	r.Rolling = rf
	var via atomic.Pointer[string]
	via.Store(&c.Nodes[0].APIURL)
	var mu sync.Mutex
	loadCtx, stopLoad := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for k := 0; loadCtx.Err() == nil; k++ {
			_, err := ss[k%len(ss)].pingVia(loadCtx, *via.Load())
			if loadCtx.Err() != nil {
				return
			}
			mu.Lock()
			rf.Commands++
			if err != nil {
				rf.Failed++
				if len(rf.Errors) < 5 {
					rf.Errors = append(rf.Errors, err.Error())
				}
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	var err error
	for i, s := range c.Nodes {
		via.Store(&c.Nodes[(i+1)%len(c.Nodes)].APIURL)
		t0 := time.Now()
		s.Stop()
		stopped := time.Since(t0)
		if err = s.Restart(ctx, c.Bin, s.args...); err != nil {
			err = fmt.Errorf("restart node %d: %w", i+1, err)
			break
		}
		for {
			got, _ := c.Connected(nil)
			if got >= m {
				break
			}
			if time.Since(t0) > 5*time.Minute {
				err = fmt.Errorf("node %d: only %d of %d agents held 5 minutes after its drain began", i+1, got, m)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			break
		}
		rf.Steps = append(rf.Steps, fmt.Sprintf("node %d: drained in %s, back and every agent held after %s",
			i+1, stopped.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond)))
	}
	rf.Total = time.Since(start).Round(time.Millisecond).String()
	stopLoad()
	<-done
	return err
}

// holders returns, for each state, the index of the node its agent's
// presence names, or -1.
func (c *Cluster) holders(ctx context.Context, states []agent.State) ([]int, error) {
	conn, err := pgx.Connect(ctx, c.pg.ConnString("argus"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	out := make([]int, len(states))
	for i, st := range states {
		var node string
		err := conn.QueryRow(ctx, "SELECT node_id FROM agent_presence WHERE agent_id = $1", st.AgentID).Scan(&node)
		out[i] = -1
		if err != nil {
			continue
		}
		var k int
		if _, err := fmt.Sscanf(node, "bench-%d", &k); err == nil && k >= 1 && k <= len(c.Nodes) {
			out[i] = k - 1
		}
	}
	return out, nil
}
