package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/jackc/pgx/v5/pgxpool"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// clusterEnv is a three-node cluster of real argus-server processes on one
// PostgreSQL, with HAProxy in front, and an administrator on it. Node 3
// loses every broadcast it sends (ARGUS_TEST_DROP_BROADCASTS=1), so what
// it ends or revokes reaches the others only by their sweep.
type clusterEnv struct {
	c     *testenv.Cluster
	token string
	pool  *pgxpool.Pool
}

const clusterTenant = "acme"

// newClusterEnv starts n nodes with remote support on, and a consenting,
// armed tenant.
func newClusterEnv(t *testing.T, n int, opts testenv.ClusterOptions) *clusterEnv {
	t.Helper()
	opts.Env = append(opts.Env, "REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.0/8", "ARGUS_OPS_TOKEN="+opsToken)
	c := testenv.StartCluster(t, n, opts)
	e := &clusterEnv{c: c, token: c.Operator(t, "admin")}
	pool, err := pgxpool.New(context.Background(), c.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e.pool = pool
	lb := e.api(c.LB.APIURL)
	ctx := context.Background()
	require.NoError(t, lb.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": clusterTenant}, nil))
	require.NoError(t, lb.Do(ctx, "POST", "/v1/tenants/"+clusterTenant+"/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane Roe"}, nil))
	require.NoError(t, lb.Do(ctx, "POST", "/v1/tenants/"+clusterTenant+"/arm", map[string]string{"reason": "INC-1"}, nil))
	return e
}

// api is a client of one node's API (or HAProxy's) as the administrator.
func (e *clusterEnv) api(base string) *apiclient.Client {
	return &apiclient.Client{BaseURL: base, Token: e.token, OpsToken: opsToken}
}

// clusterAgent is an enrolled agent running as the real binary.
type clusterAgent struct {
	id, dir string
	proc    *testenv.AgentProcess
	secret  string
}

// agent enrolls an agent through HAProxy and runs it. With a node, it is
// pinned to that node's broker (its state names the node's own URL);
// without, it dials HAProxy, as enrollment told it to.
func (e *clusterEnv) agent(t *testing.T, name string, on *testenv.Node) *clusterAgent {
	t.Helper()
	a := e.enroll(t, name)
	if on != nil {
		pinBroker(t, a.dir, on.BrokerURL())
	}
	a.proc = testenv.StartAgent(t, a.dir)
	a.proc.WaitLog(t, 0, "connected to broker", 1, 15*time.Second)
	if on != nil {
		testenv.Eventually(t, 10*time.Second, func() bool { return e.holder(a.id) == on.ID }, name+" held by "+on.ID)
	} else {
		testenv.Eventually(t, 10*time.Second, func() bool { return e.holder(a.id) != "" }, name+" held by a node")
	}
	return a
}

// enroll enrolls an agent through HAProxy without running it.
func (e *clusterEnv) enroll(t *testing.T, name string) *clusterAgent {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, e.api(e.c.LB.APIURL).Do(context.Background(), "POST", "/v1/enrollment-tokens", map[string]string{"tenant": clusterTenant, "name": name}, &tok))
	dir := filepath.Join(t.TempDir(), name)
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", e.c.LB.APIURL, "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	require.Equal(t, e.c.LB.BrokerURL, st.BrokerURL, "enrollment hands out the load balancer's broker")
	return &clusterAgent{id: st.AgentID, dir: dir, secret: st.Secret}
}

// pinBroker points an enrolled agent at one broker URL.
func pinBroker(t *testing.T, dir, url string) {
	t.Helper()
	path := filepath.Join(dir, "enrollment.json")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var st map[string]any
	require.NoError(t, json.Unmarshal(b, &st))
	st["broker_url"] = url
	b, err = json.Marshal(st)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

// holder is the node PostgreSQL says holds the agent now ("" for none).
func (e *clusterEnv) holder(agentID string) string {
	var node string
	_ = e.pool.QueryRow(context.Background(), "SELECT node_id FROM agent_presence WHERE agent_id = $1", agentID).Scan(&node)
	return node
}

// activate opens a session on agentID through node nd.
func (e *clusterEnv) activate(t *testing.T, nd *testenv.Node, agentID string) (apiclient.Session, string) {
	t.Helper()
	var res struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	require.NoError(t, e.api(nd.APIURL()).Do(context.Background(), "POST", "/v1/support/sessions",
		map[string]string{"tenant": clusterTenant, "agent": agentID, "reason": "INC-1: stream drops"}, &res))
	return res.Session, res.Token
}

// command runs a command of session id through node nd.
func (e *clusterEnv) command(nd *testenv.Node, id, token, name string) (apiclient.CommandResult, error) {
	c := e.api(nd.APIURL())
	c.SessionToken = token
	var res apiclient.CommandResult
	err := c.Do(context.Background(), "POST", "/v1/support/sessions/"+id+"/commands", map[string]string{"name": name}, &res)
	return res, err
}

func dormant(dir string) bool {
	st, err := agent.ReadStatus(dir)
	return err == nil && st.State == topics.StateDormant
}

func active(dir string) bool {
	st, err := agent.ReadStatus(dir)
	return err == nil && st.State == topics.StateActive
}

// within waits for cond, polling every 10 ms, and returns how long it
// took; it fails the test after limit.
func within(t *testing.T, limit time.Duration, cond func() bool, what string) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("not within %v: %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestCluster runs the cluster's cross-node guarantees on one cluster of
// three real nodes behind HAProxy: the subtests run in order and share it.
func TestCluster(t *testing.T) {
	e := newClusterEnv(t, 3, testenv.ClusterOptions{
		NodeEnv: map[int][]string{3: {"ARGUS_TEST_DROP_BROADCASTS=1"}},
		ProxyDB: true,
	})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)
	a1 := e.agent(t, "edge-1", n1)
	a2 := e.agent(t, "edge-2", n2)
	a3 := e.agent(t, "edge-3", n3)
	sessions := map[*clusterAgent]apiclient.Session{}
	tokens := map[*clusterAgent]string{}

	t.Run("ThreeNodesWritingAuditKeepOneChain", func(t *testing.T) {
		// A tenant none of the agents belongs to: every activation naming it
		// is refused (agent_not_found), and every refusal audited.
		require.NoError(t, e.api(e.c.LB.APIURL).Do(context.Background(), "POST", "/v1/tenants", map[string]string{"name": "idle"}, nil))
		for _, p := range []struct {
			a  *clusterAgent
			nd *testenv.Node
		}{{a1, n1}, {a2, n2}, {a3, n3}} {
			sessions[p.a], tokens[p.a] = e.activate(t, p.nd, p.a.id)
			testenv.Eventually(t, 10*time.Second, func() bool { return active(p.a.dir) }, "agent active")
		}
		var before int
		require.NoError(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&before))

		const rounds = 40
		var wg sync.WaitGroup
		var failed atomic.Int64
		for _, p := range []struct {
			a  *clusterAgent
			nd *testenv.Node
		}{{a1, n1}, {a2, n2}, {a3, n3}} {
			wg.Add(2)
			go func() {
				defer wg.Done()
				for range rounds {
					if res, err := e.command(p.nd, sessions[p.a].ID, tokens[p.a], "ping"); err != nil || res.Status != topics.ResultOK {
						failed.Add(1)
					}
				}
			}()
			go func() {
				defer wg.Done()
				for range rounds {
					err := e.api(p.nd.APIURL()).Do(context.Background(), "POST", "/v1/support/sessions",
						map[string]string{"tenant": "idle", "agent": p.a.id, "reason": "INC-2"}, nil)
					if err == nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		assert.Zero(t, failed.Load(), "every ping answered, every activation naming the idle tenant refused")

		// One chain: the events' sequence has no gap, and each event's
		// prev_hash is its predecessor's hash.
		var n, minSeq, maxSeq, broken int
		require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*), min(seq), max(seq) FROM events`).Scan(&n, &minSeq, &maxSeq))
		assert.Equal(t, maxSeq-minSeq+1, n, "no gap in the chain")
		assert.GreaterOrEqual(t, n-before, rounds*3*2, "the pings and refusals are in the chain")
		require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM events e JOIN events p ON p.seq = e.seq - 1
			WHERE e.prev_hash <> p.hash`).Scan(&broken))
		assert.Zero(t, broken, "every event links to the one before")
		// Every refusal, whichever node refused it, is in both trails.
		var deniedLogs, deniedEvents int
		require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
			WHERE action = 'support.activate' AND outcome = 'denied' AND detail->>'tenant' = 'idle'`).Scan(&deniedLogs))
		require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM events
			WHERE action = 'support.activate' AND payload->>'outcome' = 'denied' AND payload->'detail'->>'tenant' = 'idle'`).Scan(&deniedEvents))
		assert.Equal(t, rounds*3, deniedLogs, "each refused activation is audited")
		assert.Equal(t, rounds*3, deniedEvents, "each refused activation is in the chain")
		for a, sess := range sessions {
			// Requested before sending, completed before answering: two
			// rows a ping, in each trail.
			var logs, events int
			require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
				WHERE action IN ('support.command.requested', 'support.command.completed') AND session_id = $1`, sess.ID).Scan(&logs))
			require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM events
				WHERE action IN ('support.command.requested', 'support.command.completed') AND payload->>'session_id' = $1`, sess.ID).Scan(&events))
			assert.Equal(t, 2*rounds, logs, "the pings of %s's session are audited", a.id)
			assert.Equal(t, 2*rounds, events, "the pings of %s's session are in the chain", a.id)
		}
		var logs, evs int
		require.NoError(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_log").Scan(&logs))
		require.NoError(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&evs))
		assert.Equal(t, logs, evs, "one audit row per event")

		// Reconciliation, through the API of one node and the CLI.
		var report struct {
			Clean     bool `json:"clean"`
			AuditRows int  `json:"audit_rows"`
			Events    int  `json:"events"`
		}
		require.NoError(t, e.api(n2.APIURL()).Do(context.Background(), "POST", "/v1/audit/verify", map[string]string{"since": "1h"}, &report))
		assert.True(t, report.Clean, "reconcile is clean")
		assert.GreaterOrEqual(t, report.Events, n-before)
		out, stderr, err := testenv.Run(t, e.c.Env().Vars(), "argus-server", "audit", "reconcile", "--since", "1h")
		assert.NoError(t, err, "argus-server audit reconcile: %s\n%s", out, stderr)
	})

	t.Run("DeactivateOnNode2_AgentOnNode3_DormantWithin1s", func(t *testing.T) {
		// Four sessions in turn: node 3's own check would find an end within
		// 1 s now and then (it runs every 3 s), never four times running.
		sess, token := sessions[a3], tokens[a3]
		require.NotEmpty(t, sess.ID)
		for round := range 4 {
			if round > 0 {
				sess, token = e.activate(t, n3, a3.id)
			}
			testenv.Eventually(t, 10*time.Second, func() bool { return active(a3.dir) }, "agent active")
			res, err := e.command(n3, sess.ID, token, "ping")
			require.NoError(t, err)
			require.Equal(t, topics.ResultOK, res.Status)

			require.NoError(t, e.api(n2.APIURL()).Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
			took := within(t, time.Second, func() bool { return dormant(a3.dir) }, "agent on node 3 dormant")
			t.Logf("agent on node 3 dormant %v after node 2 committed the end", took.Round(time.Millisecond))
			_, err = e.command(n3, sess.ID, token, "ping")
			assert.Equal(t, "session_ended", apiCode(err), "the next command on node 3 is refused")
		}
	})

	t.Run("DeactivateWithBroadcastLost_DormantWithinOneSweep", func(t *testing.T) {
		sess := sessions[a1]
		require.True(t, active(a1.dir))
		// Node 3 commits the end and loses its broadcast: node 1 finds the
		// end in PostgreSQL at its sweep.
		require.NoError(t, e.api(n3.APIURL()).Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
		took := within(t, 5*time.Second, func() bool { return dormant(a1.dir) }, "agent on node 1 dormant")
		t.Logf("agent on node 1 dormant %v after node 3 committed the end (broadcast lost)", took.Round(time.Millisecond))
		_, err := e.command(n1, sess.ID, tokens[a1], "ping")
		assert.Equal(t, "session_ended", apiCode(err), "the next command on node 1 is refused")
	})

	t.Run("RevokeOnNode1_AgentOnNode2_DisconnectedWithin1sAndRefusedEverywhere", func(t *testing.T) {
		mark := a2.proc.LineCount()
		start := time.Now()
		require.NoError(t, e.api(n1.APIURL()).Do(context.Background(), "POST", "/v1/agents/"+a2.id+"/revoke", map[string]string{"reason": "host decommissioned"}, nil))
		mark = a2.proc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
		took := time.Since(start)
		assert.Less(t, took, time.Second, "the agent on node 2 is dropped within 1 s of node 1's revocation")
		t.Logf("agent on node 2 disconnected %v after node 1's revocation", took.Round(time.Millisecond))
		e.assertRefusedEverywhere(t, a2, mark)
	})

	t.Run("RevokeWithBroadcastLost_DisconnectedWithinOneSweep", func(t *testing.T) {
		mark := a1.proc.LineCount()
		start := time.Now()
		require.NoError(t, e.api(n3.APIURL()).Do(context.Background(), "POST", "/v1/agents/"+a1.id+"/revoke", map[string]string{"reason": "host decommissioned"}, nil))
		mark = a1.proc.WaitLog(t, mark, "disconnected from broker", 1, 10*time.Second)
		took := time.Since(start)
		assert.LessOrEqual(t, took, 5*time.Second, "within one sweep")
		t.Logf("agent on node 1 disconnected %v after node 3's revocation (broadcast lost)", took.Round(time.Millisecond))
		e.assertRefusedEverywhere(t, a1, mark)
	})

	t.Run("NodeOfAnotherClusterOrWithoutSecretIsRefused", func(t *testing.T) {
		e.strangers(t)
	})

	t.Run("NodeCutOffFromPostgresFencesAndItsAgentsMove", func(t *testing.T) {
		e.fence(t)
	})

	t.Run("KilledNode_AgentsMoveAndItsPresenceIsCleared", func(t *testing.T) {
		e.killNine(t)
	})

	t.Run("RollingRestart_APIThroughHAProxyAnswersThroughout", func(t *testing.T) {
		e.rollingRestart(t)
	})
}

// rollingRestart restarts every node in turn, as the README does (SIGTERM,
// start again, wait until HAProxy sends to it), while a reader calls the
// API through HAProxy every 10 ms: no call fails, and the agents that dial
// HAProxy are all online again at the end.
func (e *clusterEnv) rollingRestart(t *testing.T) {
	c := e.c
	var roamers []*clusterAgent
	for i := range 3 {
		roamers = append(roamers, e.agent(t, fmt.Sprintf("rolling-%d", i), nil))
	}
	lb := e.api(c.LB.APIURL)
	stop := make(chan struct{})
	var calls, failed atomic.Int64
	var firstErr atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var a apiclient.Agent
			calls.Add(1)
			if err := lb.Do(context.Background(), "GET", "/v1/agents/"+roamers[0].id, nil, &a); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	start := time.Now()
	for _, nd := range c.Nodes {
		// Down long enough for HAProxy to see it (a quicker restart may go
		// unnoticed, and would prove less).
		nd.Stop(t)
		c.LB.AwaitStatus(t, nd.ID, "DOWN", 5*time.Second)
		nd.Start(t)
		c.LB.AwaitStatus(t, nd.ID, "UP", 20*time.Second)
	}
	close(stop)
	<-done
	t.Logf("rolling restart of %d nodes: %v; %d API calls through HAProxy, %d failed (first: %v)",
		len(c.Nodes), time.Since(start).Round(time.Millisecond), calls.Load(), failed.Load(), firstErr.Load())
	assert.Zero(t, failed.Load(), "no API call through HAProxy failed during the rolling restart")
	for _, a := range roamers {
		testenv.Eventually(t, 15*time.Second, func() bool { return e.holder(a.id) != "" }, "agent back online")
	}
}

// killNine: kill -9 the node holding two agents, one that dials HAProxy
// and one pinned to that node. The first is back on another node; the
// second cannot reconnect, and a live node clears the presence the dead
// node left once its lease has run out. Restarted, the node is taken back
// in and the pinned agent returns to it.
func (e *clusterEnv) killNine(t *testing.T) {
	c := e.c
	roamer := e.agent(t, "roamer-2", nil)
	victim := c.NodeByID(e.holder(roamer.id))
	require.NotNil(t, victim)
	pinned := e.agent(t, "pinned-1", victim)
	mark := roamer.proc.LineCount()

	killed := time.Now()
	victim.Kill(t)
	roamer.proc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
	testenv.Eventually(t, 15*time.Second, func() bool {
		h := e.holder(roamer.id)
		return h != "" && h != victim.ID
	}, "the roaming agent is back on another node")
	t.Logf("agent moved from killed %s to %s %v after the kill", victim.ID, e.holder(roamer.id), time.Since(killed).Round(time.Millisecond))
	c.LB.AwaitStatus(t, victim.ID, "DOWN", 5*time.Second)

	// Nothing of the dead node's said it let go of the pinned agent: its
	// presence goes when its lease has expired and a live node clears it.
	assert.Equal(t, victim.ID, e.holder(pinned.id), "the dead node's presence row is still there at first")
	testenv.Eventually(t, 15*time.Second, func() bool { return e.holder(pinned.id) == "" }, "a live node cleared the dead node's presence")
	t.Logf("the dead node's presence was cleared %v after the kill (lease 5s)", time.Since(killed).Round(time.Millisecond))
	var a apiclient.Agent
	require.NoError(t, e.api(c.LB.APIURL).Do(context.Background(), "GET", "/v1/agents/"+pinned.id, nil, &a))
	assert.False(t, a.Online, "the pinned agent is offline")

	victim.Start(t)
	c.LB.AwaitStatus(t, victim.ID, "UP", 20*time.Second)
	testenv.Eventually(t, 15*time.Second, func() bool { return e.holder(pinned.id) == victim.ID }, "the pinned agent is back on the restarted node")
}

// assertRefusedEverywhere checks a revoked agent stays out: its own
// reconnection attempts are refused, and its credentials are refused by
// HAProxy's nodes and by every node directly.
func (e *clusterEnv) assertRefusedEverywhere(t *testing.T, a *clusterAgent, mark int) {
	t.Helper()
	a.proc.WaitLog(t, mark, "cannot connect to broker", 2, 15*time.Second)
	creds := mqtttest.Options{ClientID: a.id, Username: a.id, Password: a.secret}
	urls := []string{e.c.LB.BrokerURL, e.c.LB.BrokerURL, e.c.LB.BrokerURL}
	for _, nd := range e.c.Nodes {
		urls = append(urls, nd.BrokerURL())
	}
	for _, u := range urls {
		_, ack, err := mqtttest.Dial(t, u, creds)
		require.Error(t, err, u)
		require.NotNil(t, ack, u)
		assert.Equal(t, byte(0x86), ack.ReasonCode, "%s refuses the revoked agent", u)
	}
	// The node records the disconnect after it has happened, off the
	// broker's path.
	testenv.Eventually(t, 5*time.Second, func() bool { return e.holder(a.id) == "" }, "no node holds the revoked agent")
}

// countingRelay forwards TCP connections to target and counts the ones
// that have ended, so a test can wait for a peer's attempts to have been
// answered (refused) instead of waiting a fixed time.
type countingRelay struct {
	ln     net.Listener
	target string
	ended  atomic.Int64
}

func newCountingRelay(t *testing.T, target string) *countingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &countingRelay{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer r.ended.Add(1)
				up, err := net.Dial("tcp", r.target)
				if err != nil {
					_ = c.Close()
					return
				}
				done := make(chan struct{}, 2)
				pipe := func(dst, src net.Conn) { _, _ = io.Copy(dst, src); _ = dst.Close(); done <- struct{}{} }
				go pipe(up, c)
				go pipe(c, up)
				<-done
				<-done
			}()
		}
	}()
	return r
}

func (r *countingRelay) Addr() string { return r.ln.Addr().String() }

// natsPeer is a NATS server run by the test that routes to addrs with
// the given route credentials (none when user is empty), and a client
// connected to it that speaks on the cluster's subjects.
func natsPeer(t *testing.T, name, cluster, user, secret string, addrs ...string) (*natsserver.Server, *nats.Conn) {
	t.Helper()
	var routes []string
	for _, a := range addrs {
		if user != "" {
			routes = append(routes, "nats://"+user+":"+secret+"@"+a)
		} else {
			routes = append(routes, "nats://"+a)
		}
	}
	o := &natsserver.Options{
		ServerName: name, Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, NoSigs: true, NoLog: true,
		Cluster: natsserver.ClusterOpts{Name: cluster, Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, Username: user, Password: secret},
		Routes:  natsserver.RoutesFromStr(strings.Join(routes, ",")),
	}
	ns, err := natsserver.NewServer(o)
	require.NoError(t, err)
	ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL(), nats.CustomInboxPrefix("argus."+cluster+"._INBOX"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return ns, nc
}

func routedTo(ns *natsserver.Server) map[string]bool {
	out := map[string]bool{}
	rz, err := ns.Routez(&natsserver.RoutezOptions{})
	if err != nil {
		return out
	}
	for _, r := range rz.Routes {
		out[r.RemoteName] = true
	}
	return out
}

// pingNode asks a node over NATS whether it is there, as the nodes ask
// each other.
func pingNode(nc *nats.Conn, cluster, node string) error {
	m, err := nc.Request("argus."+cluster+".node."+node+".ping", nil, 2*time.Second)
	if err != nil {
		return err
	}
	if string(m.Data) != node {
		return fmt.Errorf("answered %q", m.Data)
	}
	return nil
}

// strangers: a node with another cluster's secret and a NATS server with
// no credentials both try to route to node 1 and are refused; the cluster
// never routes to them and they reach no node. A node configured with no
// secret does not start.
func (e *clusterEnv) strangers(t *testing.T) {
	c := e.c
	// The test's own member, with the cluster's route credentials: it
	// sees every node, so what it does not see is not there.
	var addrs []string
	for _, nd := range c.Nodes {
		addrs = append(addrs, nd.RouteAddr)
	}
	observer, onc := natsPeer(t, "observer", c.Name, "argus-route", c.Secret, addrs...)
	testenv.Eventually(t, 15*time.Second, func() bool {
		r := routedTo(observer)
		return r["node-1"] && r["node-2"] && r["node-3"]
	}, "the observer is routed to every node")
	// A route's subscriptions follow it over the wire a moment later.
	for _, nd := range c.Nodes {
		testenv.Eventually(t, 10*time.Second, func() bool { return pingNode(onc, c.Name, nd.ID) == nil }, nd.ID+" answers a member")
	}

	// Another cluster's secret, on a real node (same database, same key).
	relay := newCountingRelay(t, c.Node(1).RouteAddr)
	other := c.Stranger(t, "node-other", strings.Repeat("f", 64))
	other.SetPeers([]string{relay.Addr()})
	other.Start(t)
	// Its route is opened and closed at least twice (refused, retried,
	// refused again) before anything is checked.
	testenv.Eventually(t, 20*time.Second, func() bool { return relay.ended.Load() >= 2 }, "the stranger's route attempts were answered")
	assert.NotContains(t, routedTo(observer), "node-other", "the cluster is not routed to the node of another cluster")
	assert.ErrorIs(t, pingNode(onc, c.Name, "node-other"), nats.ErrNoResponders, "the cluster cannot reach it")
	for _, nd := range c.Nodes {
		require.NoError(t, pingNode(onc, c.Name, nd.ID), "%s still answers a member", nd.ID)
	}
	other.Stop(t)

	// A bare NATS server with no credentials at all.
	bare := newCountingRelay(t, c.Node(1).RouteAddr)
	rogue, rnc := natsPeer(t, "rogue", c.Name, "", "", bare.Addr())
	testenv.Eventually(t, 20*time.Second, func() bool { return bare.ended.Load() >= 2 }, "the rogue's route attempts were answered")
	assert.Empty(t, routedTo(rogue), "no node routes to a server without the cluster's credentials")
	assert.NotContains(t, routedTo(observer), "rogue")
	for _, nd := range c.Nodes {
		assert.ErrorIs(t, pingNode(rnc, c.Name, nd.ID), nats.ErrNoResponders, "the rogue reaches no node (%s)", nd.ID)
	}

	// No secret: a node that would route does not start.
	none := c.Stranger(t, "node-none", "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := testenv.ServerCommand(ctx, t, none.DataDir, none.Vars(), none.Args()...)
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "a cluster node without a secret refuses to start")
	assert.Contains(t, string(out), "cluster-secret")
}

// fence: node A is cut off from PostgreSQL. Within its lease it fences
// itself: /readyz fails, HAProxy takes it out of both backends, and its
// agents, sent away, come back through HAProxy to another node.
func (e *clusterEnv) fence(t *testing.T) {
	c := e.c
	// Two agents through HAProxy (leastconn): the first lands on a node
	// that holds no HAProxy connection yet.
	b1 := e.agent(t, "roamer-1", nil)
	victim := c.NodeByID(e.holder(b1.id))
	require.NotNil(t, victim)
	// A live session on it, opened through the node that holds it.
	sess, token := e.activate(t, victim, b1.id)
	testenv.Eventually(t, 10*time.Second, func() bool { return active(b1.dir) }, "agent active")
	res, err := e.command(victim, sess.ID, token, "ping")
	require.NoError(t, err)
	require.Equal(t, topics.ResultOK, res.Status)
	// And an agent's raw connection straight to it, to see how it is sent
	// away.
	raw := e.enroll(t, "raw-1")
	creds := mqtttest.Options{ClientID: raw.id, Username: raw.id, Password: raw.secret}
	rc, _, err := mqtttest.Dial(t, victim.BrokerURL(), creds)
	require.NoError(t, err)
	defer rc.Disconnect(&paho.Disconnect{})
	mark := b1.proc.LineCount()
	var resp *http.Response

	cut := time.Now()
	victim.DB.Cut()
	lease := 5 * time.Second
	p := victim.Process()
	testenv.Eventually(t, lease+3*time.Second, func() bool { return strings.Contains(p.Logs(), "cluster: node fenced") }, "node fenced itself")
	fencedAfter := time.Since(cut)
	t.Logf("%s fenced itself %v after its database link was cut (lease %v)", victim.ID, fencedAfter.Round(time.Millisecond), lease)
	assert.LessOrEqual(t, fencedAfter, lease+2*time.Second, "fenced within its lease (and one renewal)")

	resp, err = http.Get(victim.APIURL() + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "a fenced node is not ready")
	// Its agents are told to use another server (MQTT v5 reason 0x9C),
	// and new ones are refused the same way.
	select {
	case d := <-rc.Disconnected:
		assert.Equal(t, byte(0x9C), d.ReasonCode, "use another server")
	case <-time.After(5 * time.Second):
		t.Fatal("the fenced node did not disconnect the agent")
	}
	_, ack, err := mqtttest.Dial(t, victim.BrokerURL(), creds)
	require.Error(t, err)
	require.NotNil(t, ack)
	assert.Equal(t, byte(0x9C), ack.ReasonCode, "a fenced node sends new agents elsewhere")

	// Nothing goes through it any more.
	_, err = e.command(victim, sess.ID, token, "ping")
	t.Logf("command through the fenced node: %v", err)
	assert.Contains(t, []string{"node_fenced", "unavailable"}, apiCode(err), "a command through the fenced node is refused")

	// HAProxy takes it out of both back ends.
	c.LB.AwaitStatus(t, victim.ID, "DOWN", 5*time.Second)

	// The agent was sent away and is back, through HAProxy, on another node.
	b1.proc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
	testenv.Eventually(t, 15*time.Second, func() bool {
		h := e.holder(b1.id)
		return h != "" && h != victim.ID
	}, "the agent moved to another node")
	t.Logf("agent moved from %s to %s %v after the cut", victim.ID, e.holder(b1.id), time.Since(cut).Round(time.Millisecond))

	// The API through HAProxy keeps answering (from the others).
	for range 3 {
		var a apiclient.Agent
		require.NoError(t, e.api(c.LB.APIURL).Do(context.Background(), "GET", "/v1/agents/"+b1.id, nil, &a))
		assert.True(t, a.Online)
	}

	// Its database back, the node renews its lease and is taken back in.
	victim.DB.Restore()
	c.LB.AwaitStatus(t, victim.ID, "UP", 20*time.Second)
}

// TestCluster_ExternalNATS joins two nodes through a NATS server of their
// own (cluster-nats-url) instead of embedded ones: a NATS that admits the
// nodes' user to the cluster's subjects only. Revocations and ends still
// reach the node holding the agent within 1 s.
func TestCluster_ExternalNATS(t *testing.T) {
	const name, user = "argus-ext", "argus-node"
	password := strings.Repeat("7", 40)
	perms := &natsserver.Permissions{
		Publish:   &natsserver.SubjectPermission{Allow: []string{"argus." + name + ".>"}},
		Subscribe: &natsserver.SubjectPermission{Allow: []string{"argus." + name + ".>"}},
	}
	ns, err := natsserver.NewServer(&natsserver.Options{ServerName: "external", Host: "127.0.0.1", Port: natsserver.RANDOM_PORT,
		NoSigs: true, NoLog: true, Users: []*natsserver.User{{Username: user, Password: password, Permissions: perms}},
		// Room for a whole command result, as the README tells an external NATS to have.
		MaxPayload: cluster.MaxPayload})
	require.NoError(t, err)
	ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(ns.Shutdown)
	addr := ns.Addr().String()

	e := newClusterEnv(t, 2, testenv.ClusterOptions{Name: name, NATSURL: "nats://" + user + ":" + password + "@" + addr})
	c, ctx := e.c, context.Background()
	n1, n2 := c.Node(1), c.Node(2)
	assert.Equal(t, 2, ns.NumClients(), "both nodes are connected to the external NATS")
	for _, log := range []string{n1.Logs(), n2.Logs()} {
		assert.NotContains(t, log, password, "the NATS password is never logged")
	}

	a := e.agent(t, "edge-ext", n2)
	sess, token := e.activate(t, n2, a.id)
	testenv.Eventually(t, 10*time.Second, func() bool { return active(a.dir) }, "agent active")
	require.NoError(t, e.api(n1.APIURL()).Do(ctx, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	took := within(t, time.Second, func() bool { return dormant(a.dir) }, "agent on node 2 dormant")
	t.Logf("agent on node 2 dormant %v after node 1 committed the end", took.Round(time.Millisecond))
	_, err = e.command(n2, sess.ID, token, "ping")
	assert.Equal(t, "session_ended", apiCode(err))

	mark := a.proc.LineCount()
	start := time.Now()
	require.NoError(t, e.api(n1.APIURL()).Do(ctx, "POST", "/v1/agents/"+a.id+"/revoke", map[string]string{"reason": "host decommissioned"}, nil))
	mark = a.proc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
	assert.Less(t, time.Since(start), time.Second, "dropped within 1 s of the revocation on the other node")
	e.assertRefusedEverywhere(t, a, mark)
}
