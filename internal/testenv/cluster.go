package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/argus-remote/argus/controlplane/signing"
)

// ClusterOptions shape a cluster of real argus-server processes.
type ClusterOptions struct {
	// Name is the cluster's name (default argus-e2e).
	Name string
	// Lease is each node's cluster-lease (default 5s).
	Lease string
	// Env is given to every node; NodeEnv[i] to node i (1-based) only.
	Env     []string
	NodeEnv map[int][]string
	// ProxyDB puts a Proxy between each node and PostgreSQL (Node.DB), so
	// a test can cut one node off the database and no other.
	ProxyDB bool
	// NATSURL, when set, joins the nodes through that external NATS
	// (cluster-nats-url, credentials in the URL) instead of embedded
	// servers routed to each other.
	NATSURL string
}

// Cluster is n argus-server processes on one PostgreSQL, routed to each
// other by their embedded NATS servers, sharing the control-plane
// signing key, with HAProxy in front of their APIs and brokers.
type Cluster struct {
	Name        string
	Secret      string
	DatabaseURL string
	// KeyFile is the command-signing key every node signs with (the one
	// agents pin at enrollment, wherever they enroll).
	KeyFile string
	Nodes   []*Node
	LB      *HAProxy

	opts ClusterOptions
	dir  string
}

// Node is one argus-server process of a Cluster. Its addresses stay the
// same across restarts, so HAProxy and the other nodes find it again.
type Node struct {
	ID        string
	Index     int // 1-based
	DataDir   string
	HTTPAddr  string
	MQTTAddr  string
	RouteAddr string
	// DB is the node's own link to PostgreSQL, when ClusterOptions.ProxyDB.
	DB *Proxy
	// Env is this node's environment beyond the cluster's settings.
	Env []string

	c      *Cluster
	dbURL  string
	secret string
	peers  []string
	mu     sync.Mutex
	proc   *ServerProcess
}

// StartCluster starts n nodes and HAProxy, and returns once every node is
// ready and HAProxy sends to it (its routes to the others form in the
// background).
func StartCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "argus-e2e"
	}
	if opts.Lease == "" {
		opts.Lease = "5s"
	}
	c := &Cluster{Name: opts.Name, Secret: randomSecret(), DatabaseURL: DatabaseURL(t), opts: opts, dir: TempDir(t)}
	c.KeyFile = filepath.Join(c.dir, "keys", "command-signing.key")
	if err := os.MkdirAll(filepath.Dir(c.KeyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := signing.LoadOrCreate(c.KeyFile); err != nil {
		t.Fatalf("testenv: signing key: %v", err)
	}
	for i := 1; i <= n; i++ {
		c.Nodes = append(c.Nodes, &Node{
			ID: fmt.Sprintf("node-%d", i), Index: i, DataDir: filepath.Join(c.dir, fmt.Sprintf("node-%d", i)),
			HTTPAddr: FreeAddr(t), MQTTAddr: FreeAddr(t), RouteAddr: FreeAddr(t),
			Env: append(append([]string(nil), opts.Env...), opts.NodeEnv[i]...), c: c, secret: c.Secret,
		})
	}
	for _, nd := range c.Nodes {
		// Every node gets the same list, its own address included, as the
		// README does: NATS skips a route to itself.
		for _, m := range c.Nodes {
			nd.peers = append(nd.peers, m.RouteAddr)
		}
		nd.dbURL = c.DatabaseURL
		if opts.ProxyDB {
			nd.DB, nd.dbURL = PostgresProxy(t, c.DatabaseURL)
		}
	}
	// HAProxy first: the nodes hand its broker address to enrolling agents.
	c.LB = StartHAProxy(t, c.Nodes)
	for _, nd := range c.Nodes {
		nd.Start(t)
	}
	for _, nd := range c.Nodes {
		c.LB.AwaitStatus(t, nd.ID, "UP", 15*time.Second)
	}
	return c
}

// Env is an Env on the cluster's database, for the direct-database
// commands (operator create, audit reconcile).
func (c *Cluster) Env() *Env { return &Env{DataDir: c.Nodes[0].DataDir, DatabaseURL: c.DatabaseURL} }

// Operator creates an operator with the given scopes (all when none).
func (c *Cluster) Operator(t testing.TB, name string, scopes ...string) string {
	t.Helper()
	return c.Env().Operator(t, name, scopes...)
}

// Node returns node i (1-based).
func (c *Cluster) Node(i int) *Node { return c.Nodes[i-1] }

// NodeByID returns the node named id, or nil.
func (c *Cluster) NodeByID(id string) *Node {
	for _, nd := range c.Nodes {
		if nd.ID == id {
			return nd
		}
	}
	return nil
}

// Stranger is a node configured like the cluster's (same database, same
// signing key, routes to every member) but with secret for its cluster
// secret: a node of another cluster, or a misconfigured one. It is not
// behind HAProxy and not in Nodes. Start it with Start.
func (c *Cluster) Stranger(t testing.TB, id, secret string) *Node {
	t.Helper()
	nd := &Node{ID: id, DataDir: filepath.Join(c.dir, id), HTTPAddr: FreeAddr(t), MQTTAddr: FreeAddr(t), RouteAddr: FreeAddr(t),
		Env: append([]string(nil), c.opts.Env...), c: c, secret: secret, dbURL: c.DatabaseURL}
	for _, m := range c.Nodes {
		nd.peers = append(nd.peers, m.RouteAddr)
	}
	return nd
}

// APIURL is the node's own API address (not through HAProxy).
func (n *Node) APIURL() string { return "http://" + n.HTTPAddr }

// BrokerURL is the node's own broker address (not through HAProxy).
func (n *Node) BrokerURL() string { return "ws://" + n.MQTTAddr + "/mqtt" }

// Process is the node's current process (nil before its first start).
func (n *Node) Process() *ServerProcess {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// Vars is the node's environment: its cluster settings and its own.
func (n *Node) Vars() []string {
	env := []string{
		"ARGUS_DATABASE_URL=" + n.dbURL,
		"ARGUS_NODE_ID=" + n.ID,
		"ARGUS_CLUSTER_NAME=" + n.c.Name,
		"ARGUS_CLUSTER_LEASE=" + n.c.opts.Lease,
		"ARGUS_COMMAND_SIGNING_KEY=" + n.c.KeyFile,
	}
	if n.c.opts.NATSURL != "" {
		env = append(env, "ARGUS_CLUSTER_NATS_URL="+n.c.opts.NATSURL)
	} else {
		env = append(env, "ARGUS_CLUSTER_LISTEN="+n.RouteAddr, "ARGUS_CLUSTER_PEERS="+strings.Join(n.peers, ","),
			// Empty means none: the node is left to refuse or accept that.
			"ARGUS_CLUSTER_SECRET="+n.secret)
	}
	if n.c.LB != nil {
		env = append(env, "ARGUS_MQTT_PUBLIC_URL="+n.c.LB.BrokerURL)
	}
	return append(env, n.Env...)
}

// Start runs the node's process and waits until it is ready.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	p := StartServer(t, n.DataDir, n.Vars(), n.Args()...)
	// StartServer logs its output if the test fails; the node names
	// itself in its "cluster joined" line.
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
}

// Args are the node's serve flags beyond StartServer's own.
func (n *Node) Args() []string {
	return []string{"--http-addr", n.HTTPAddr, "--mqtt-ws-addr", n.MQTTAddr}
}

// SetPeers replaces the route addresses the node dials (from its next
// start).
func (n *Node) SetPeers(addrs []string) { n.peers = append([]string(nil), addrs...) }

// ServerCommand is `argus-server serve` as StartServer runs it, not
// started, for a test that expects it to refuse to start.
func ServerCommand(ctx context.Context, t testing.TB, dataDir string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	full := append([]string{"serve", "--data-dir", dataDir, "--http-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	cmd := exec.CommandContext(ctx, Binary(t, "argus-server"), full...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// Stop sends SIGTERM and waits for the node to exit.
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	if p := n.Process(); p != nil {
		p.Stop(t)
	}
}

// Kill kills the node with SIGKILL (no drain, no clean-up) and waits.
func (n *Node) Kill(t testing.TB) {
	t.Helper()
	p := n.Process()
	if p == nil {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.Done()
}

// Restart stops the node (SIGTERM) and starts it again on the same
// addresses, with extraEnv added to its environment from now on.
func (n *Node) Restart(t testing.TB, extraEnv ...string) {
	t.Helper()
	n.Stop(t)
	n.Env = append(n.Env, extraEnv...)
	n.Start(t)
}

// Logs is what the node's current process has logged.
func (n *Node) Logs() string {
	if p := n.Process(); p != nil {
		return p.Logs()
	}
	return ""
}

// FreeAddr returns a loopback address whose port was free a moment ago,
// for a listener that must keep its address across restarts.
//
// The port comes from below the kernel's ephemeral range: a port the
// kernel hands out for ":0" goes back into the pool the kernel picks
// outgoing connections' source ports from, and with many agents dialling
// one of them could take it before the node binds it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range fixedPorts.hi - fixedPorts.lo {
		port := fixedPorts.next()
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // another process's
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		return addr
	}
	t.Fatal("testenv: no free port in the fixed range")
	return ""
}

// fixedPorts hands out ports below the kernel's ephemeral range, starting
// at a random point so that test processes running at once rarely try
// the same ones.
var fixedPorts = belowEphemeral()

// belowEphemeral is the 12,000 ports under the start of the ephemeral
// range (ip_local_port_range; Linux's default starts at 32768).
func belowEphemeral() *portRange {
	start := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 2048 {
				start = n
			}
		}
	}
	return &portRange{lo: max(1024, start-12000), hi: start}
}

type portRange struct {
	lo, hi int
	once   sync.Once
	mu     sync.Mutex
	cur    int
}

func (r *portRange) next() int {
	r.once.Do(func() {
		var b [2]byte
		_, _ = rand.Read(b[:])
		r.cur = r.lo + (int(b[0])<<8|int(b[1]))%(r.hi-r.lo)
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.cur
	r.cur++
	if r.cur == r.hi {
		r.cur = r.lo
	}
	return p
}

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// HAProxy is Debian's haproxy in front of a cluster's nodes, running
// configs/haproxy.cfg with the test's addresses in place of the example's.
type HAProxy struct {
	APIURL    string
	BrokerURL string
	Config    string
	socket    string
	cmd       *exec.Cmd
	mu        sync.Mutex
	logs      bytes.Buffer
	done      chan struct{}
}

// exampleAddrs are the addresses configs/haproxy.cfg is written with:
// HAProxy's two front ends, then each node's API and broker.
const (
	exampleAPI    = "127.0.0.1:8080"
	exampleBroker = "127.0.0.1:8083"
	exampleSocket = "/tmp/argus-haproxy.sock"
)

func exampleNodeAddrs(i int) (api, broker string) {
	return fmt.Sprintf("127.0.0.1:818%d", i), fmt.Sprintf("127.0.0.1:828%d", i)
}

// StartHAProxy runs haproxy in the foreground for nodes (at most 3, as
// in the example) until the test ends. The test is skipped when haproxy
// is not installed (failed with ARGUS_REQUIRE_ALL=1).
func StartHAProxy(t testing.TB, nodes []*Node) *HAProxy {
	t.Helper()
	bin := NeedTool(t, "haproxy", "haproxy")
	if len(nodes) > 3 {
		t.Fatalf("testenv: configs/haproxy.cfg names 3 nodes, not %d", len(nodes))
	}
	example, err := os.ReadFile(filepath.Join(moduleRoot(), "configs", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	dir := TempDir(t)
	h := &HAProxy{socket: filepath.Join(dir, "haproxy.sock"), done: make(chan struct{})}
	apiAddr, brokerAddr := FreeAddr(t), FreeAddr(t)
	h.APIURL, h.BrokerURL = "http://"+apiAddr, "ws://"+brokerAddr+"/mqtt"
	cfg := string(example)
	replace := func(old, new string) {
		if !strings.Contains(cfg, old) {
			t.Fatalf("testenv: configs/haproxy.cfg no longer holds %s", old)
		}
		cfg = strings.ReplaceAll(cfg, old, new)
	}
	// Node addresses first: the front ends' ports are prefixes of none of
	// them, but the nodes' API ports appear in the broker lines too.
	for i := 1; i <= 3; i++ {
		api, broker := exampleNodeAddrs(i)
		_, apiPort, _ := net.SplitHostPort(api)
		if i > len(nodes) {
			// A smaller cluster: its missing servers go.
			var kept []string
			for _, line := range strings.Split(cfg, "\n") {
				if !strings.Contains(line, "server node-"+fmt.Sprint(i)+" ") {
					kept = append(kept, line)
				}
			}
			cfg = strings.Join(kept, "\n")
			continue
		}
		nd := nodes[i-1]
		_, nodeAPIPort, _ := net.SplitHostPort(nd.HTTPAddr)
		replace(api+" ", nd.HTTPAddr+" ")
		replace(broker+" ", nd.MQTTAddr+" ")
		replace("check port "+apiPort, "check port "+nodeAPIPort)
		replace("server node-"+fmt.Sprint(i)+" ", "server "+nd.ID+" ")
	}
	replace("bind "+exampleAPI, "bind "+apiAddr)
	replace("bind "+exampleBroker, "bind "+brokerAddr)
	replace(exampleSocket, h.socket)
	h.Config = filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(h.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", h.Config).CombinedOutput(); err != nil {
		t.Fatalf("testenv: haproxy -c: %v\n%s\n%s", err, out, cfg)
	}
	h.cmd = exec.Command(bin, "-db", "-f", h.Config)
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stderr = h.cmd.Stdout
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.mu.Lock()
			h.logs.Write(sc.Bytes())
			h.logs.WriteByte('\n')
			h.mu.Unlock()
		}
		_ = h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.done
		}
		if t.Failed() {
			t.Logf("haproxy logs:\n%s", h.Logs())
		}
	})
	// Ready once its stats socket answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := h.command("show info"); err == nil {
			break
		}
		select {
		case <-h.done:
			t.Fatalf("haproxy exited: %s", h.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy not ready within 10s: %s", h.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return h
}

// Logs is what HAProxy has logged.
func (h *HAProxy) Logs() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.logs.String()
}

// command runs one command on HAProxy's stats socket.
func (h *HAProxy) command(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", h.socket, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return "", err
	}
	var b bytes.Buffer
	_, err = b.ReadFrom(c)
	return b.String(), err
}

// ServerStatus is HAProxy's view of one node in one backend (argus_api or
// argus_mqtt): "UP", "DOWN", "UP 1/2" (going down) and so on.
func (h *HAProxy) ServerStatus(backend, node string) (string, error) {
	out, err := h.command("show stat")
	if err != nil {
		return "", err
	}
	// CSV: pxname,svname,...; the status column is named "status".
	lines := strings.Split(out, "\n")
	if len(lines) == 0 {
		return "", fmt.Errorf("haproxy: empty show stat")
	}
	header := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := -1
	for i, name := range header {
		if name == "status" {
			col = i
		}
	}
	if col < 0 {
		return "", fmt.Errorf("haproxy: no status column in %q", lines[0])
	}
	for _, line := range lines[1:] {
		f := strings.Split(line, ",")
		if len(f) > col && f[0] == backend && f[1] == node {
			return f[col], nil
		}
	}
	return "", fmt.Errorf("haproxy: no server %s/%s", backend, node)
}

// AwaitStatus waits until HAProxy reports node in state ("UP", "DOWN")
// in both back ends, the API's and the broker's.
func (h *HAProxy) AwaitStatus(t testing.TB, node, state string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, backend := range []string{"argus_api", "argus_mqtt"} {
		for {
			st, err := h.ServerStatus(backend, node)
			if err == nil && (st == state || strings.HasPrefix(st, state+" ")) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("haproxy: %s/%s is %q (%v), not %s, after %v", backend, node, st, err, state, timeout)
			}
			// HAProxy has no way to be told of a change: it is asked.
			time.Sleep(50 * time.Millisecond)
		}
	}
}
