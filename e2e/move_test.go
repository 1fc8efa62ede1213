package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/patch"
	"github.com/argus-remote/argus/topics"
)

// clusterNode is one argus-server process of a two-node cluster.
type clusterNode struct {
	id, dataDir, route string
	env                []string
	proc               *testenv.ServerProcess
	api                *apiclient.Client
}

// twoNodes is two argus-server processes on one PostgreSQL, routed to
// each other by their embedded NATS servers and sharing the signing key,
// with an operator and an armed tenant.
type twoNodes struct {
	env   *testenv.Env
	pool  *pgxpool.Pool
	token string
	nodes [2]*clusterNode
}

func newTwoNodes(t *testing.T, extraEnv ...string) *twoNodes {
	t.Helper()
	env := testenv.NewEnv(t)
	c := &twoNodes{env: env}
	shared := t.TempDir()
	secret := strings.Repeat("s3cret-of-the-move-test-", 2)
	routes := [2]string{testenv.FreeAddr(t), testenv.FreeAddr(t)}
	for i, id := range []string{"node-a", "node-b"} {
		n := &clusterNode{id: id, dataDir: filepath.Join(t.TempDir(), id), route: routes[i]}
		n.env = append(env.Vars(),
			"ARGUS_DATA_DIR="+n.dataDir, "ARGUS_NODE_ID="+id,
			"ARGUS_CLUSTER_NAME=movetest", "ARGUS_CLUSTER_SECRET="+secret,
			"ARGUS_CLUSTER_LISTEN="+routes[i], "ARGUS_CLUSTER_PEERS="+routes[1-i],
			"ARGUS_COMMAND_SIGNING_KEY="+filepath.Join(shared, "command-signing.key"),
			"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.1/32", "ARGUS_OPS_TOKEN="+opsToken,
			// Commands wait for an agent between nodes rather than fail.
			"ARGUS_COMMAND_RECONNECT_WAIT=10s", "ARGUS_LOG_LEVEL=debug",
		)
		n.env = append(n.env, extraEnv...)
		c.nodes[i] = n
	}
	// One after the other: the first makes the shared signing key.
	for _, n := range c.nodes {
		n.proc = testenv.StartServer(t, n.dataDir, n.env)
	}
	c.token = env.Operator(t, "alice")
	for _, n := range c.nodes {
		n.api = &apiclient.Client{BaseURL: n.proc.APIURL, Token: c.token, OpsToken: opsToken}
	}
	pool, err := pgxpool.New(context.Background(), env.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	c.pool = pool

	a := c.nodes[0].api
	ctx := context.Background()
	require.NoError(t, a.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	require.NoError(t, a.Do(ctx, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane Roe"}, nil))
	require.NoError(t, a.Do(ctx, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-1"}, nil))
	return c
}

// runAgent enrolls an agent and runs it with both nodes' brokers; it
// returns once the agent's connection is recorded on one of them.
func (c *twoNodes) runAgent(t *testing.T, name, config string) (string, *testenv.AgentProcess) {
	t.Helper()
	dir, st := c.enroll(t, name)
	env := []string{"ARGUS_AGENT_BROKER_URLS=" + c.nodes[0].proc.MQTTURL + "," + c.nodes[1].proc.MQTTURL}
	if config != "" {
		env = append(env, "ARGUS_AGENT_CONFIG="+config)
	}
	proc := testenv.StartAgent(t, dir, env...)
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return c.holder(t, st.AgentID) != nil }, "agent's connection recorded")
	return st.AgentID, proc
}

// enroll enrolls an agent of acme and returns its state directory and
// state.
func (c *twoNodes) enroll(t *testing.T, name string) (string, agent.State) {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, c.nodes[0].api.Do(context.Background(), "POST", "/v1/enrollment-tokens", map[string]string{"tenant": "acme", "name": name}, &tok))
	dir := filepath.Join(t.TempDir(), name)
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", c.nodes[0].proc.APIURL, "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	return dir, st
}

// holder is the node the database says holds the agent.
func (c *twoNodes) holder(t *testing.T, agentID string) *clusterNode {
	t.Helper()
	var node string
	err := c.pool.QueryRow(context.Background(), "SELECT node_id FROM agent_presence WHERE agent_id = $1", agentID).Scan(&node)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	require.NoError(t, err)
	for _, n := range c.nodes {
		if n.id == node {
			return n
		}
	}
	return nil
}

func (c *twoNodes) other(n *clusterNode) *clusterNode {
	if n == c.nodes[0] {
		return c.nodes[1]
	}
	return c.nodes[0]
}

func (c *twoNodes) activate(t *testing.T, n *clusterNode, agentID string) (apiclient.Session, string) {
	t.Helper()
	var res struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	require.NoError(t, n.api.Do(context.Background(), "POST", "/v1/support/sessions",
		map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-7: node maintenance"}, &res))
	require.NotNil(t, res.Session.AckedAt, "the agent acknowledged its activation")
	return res.Session, res.Token
}

func (c *twoNodes) ping(n *clusterNode, sessionID, token string) (apiclient.CommandResult, error) {
	cl := *n.api
	cl.SessionToken = token
	var res apiclient.CommandResult
	err := cl.Do(context.Background(), "POST", "/v1/support/sessions/"+sessionID+"/commands", map[string]string{"name": "ping"}, &res)
	return res, err
}

func (c *twoNodes) session(t *testing.T, n *clusterNode, id string) apiclient.Session {
	t.Helper()
	var s apiclient.Session
	require.NoError(t, n.api.Do(context.Background(), "GET", "/v1/support/sessions/"+id, nil, &s))
	return s
}

// moves are the agent.moved rows of a session: from node, to node.
func (c *twoNodes) moves(t *testing.T, sessionID string) [][2]string {
	t.Helper()
	rows, err := c.pool.Query(context.Background(), `SELECT detail->>'from_node', detail->>'to_node' FROM audit_log
		WHERE action = 'agent.moved' AND session_id = $1 ORDER BY occurred_at`, sessionID)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var m [2]string
		err := r.Scan(&m[0], &m[1])
		return m, err
	})
	require.NoError(t, err)
	return out
}

// The node holding an agent in a live session dies (SIGKILL): the agent
// reconnects to the other node from its own list, that node takes the
// session up, the move is audited, and the next command through it
// succeeds within 15 s. Nothing ends the session.
func TestCluster_SessionSurvivesItsNodesDeath(t *testing.T) {
	c := newTwoNodes(t)
	agentID, proc := c.runAgent(t, "cam-gw-1", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	survivor := c.other(holder)
	sess, token := c.activate(t, holder, agentID)
	res, err := c.ping(holder, sess.ID, token)
	require.NoError(t, err)
	require.Equal(t, "ok", res.Status)

	mark := proc.LineCount()
	killed := time.Now()
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGKILL))
	<-holder.proc.Done()

	proc.WaitLog(t, mark, "connected to broker", 1, 15*time.Second)
	res, err = c.ping(survivor, sess.ID, token)
	took := time.Since(killed)
	require.NoError(t, err, "the next command through the node that now holds the agent")
	assert.Equal(t, "ok", res.Status)
	assert.Less(t, took, 15*time.Second)
	t.Logf("from SIGKILL of %s to a command answered through %s: %v", holder.id, survivor.id, took.Round(time.Millisecond))

	assert.Equal(t, survivor, c.holder(t, agentID), "the agent is held by the survivor")
	got := c.session(t, survivor, sess.ID)
	assert.Nil(t, got.EndedAt, "the session was never ended")
	assert.True(t, got.Active)
	assert.Equal(t, [][2]string{{holder.id, survivor.id}}, c.moves(t, sess.ID), "agent.moved audited, from the dead node to the survivor")
	c.assertTenantActive(t, survivor, sess)
}

// assertTenantActive reads the tenant's retained live indicator from n's
// broker, as a monitor: it names the session as live.
func (c *twoNodes) assertTenantActive(t *testing.T, n *clusterNode, sess apiclient.Session) {
	t.Helper()
	tid, err := topics.ParseTenantID(sess.TenantID)
	require.NoError(t, err)
	mon, _, err := mqtttest.Dial(t, n.proc.MQTTURL, mqtttest.Options{ClientID: "monitor-move", Username: "monitor", Password: c.token})
	require.NoError(t, err)
	_, err = mon.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: tid.RemoteSupport(), QoS: 1}}})
	require.NoError(t, err)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case pk := <-mon.Received:
			var st struct {
				Active   bool `json:"active"`
				Sessions []struct {
					SessionID string `json:"session_id"`
				} `json:"sessions"`
			}
			if pk.Topic == tid.RemoteSupport() && json.Unmarshal(pk.Payload, &st) == nil && st.Active &&
				len(st.Sessions) == 1 && st.Sessions[0].SessionID == sess.ID {
				return
			}
		case <-deadline:
			t.Fatalf("the tenant's indicator on %s does not show session %s live", n.id, sess.ID)
		}
	}
}

// heldPatch is an agent configuration whose patches' health check runs
// (touching started) until the file hold is removed, so a test can keep a
// patch in flight as long as it needs; key signs the patches it accepts.
type heldPatch struct {
	config, started, hold string
	key                   ed25519.PrivateKey
}

// newHeldPatch writes a patch root "streamer" with bin/run.sh, a patch key
// and the configuration; healthTimeout is the agent's bound on the check.
func newHeldPatch(t *testing.T, healthTimeout string) heldPatch {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "streamer")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "bin", "run.sh"), []byte("#!/bin/sh\necho v1\n"), 0o644))
	pub, key, _ := ed25519.GenerateKey(nil)
	pubFile := filepath.Join(dir, "patch-signing.pub")
	require.NoError(t, os.WriteFile(pubFile, []byte(patch.EncodePublic(pub)+"\n"), 0o644))
	hp := heldPatch{config: filepath.Join(dir, "agent.yaml"), started: filepath.Join(dir, "health-started"), hold: filepath.Join(dir, "health-hold"), key: key}
	require.NoError(t, os.WriteFile(hp.config, []byte(fmt.Sprintf(`patch-keys: [%s]
patch-roots:
  streamer: %s
patch-health-check: [/bin/sh, -c, "touch %s; while [ -e %s ]; do sleep 0.05; done"]
patch-health-timeout: %s
`, pubFile, root, hp.started, hp.hold, healthTimeout)), 0o600))
	return hp
}

// SIGTERM on the node holding an agent with a patch in flight: the node
// stops taking agents, lets the patch finish (its health check is held
// open by the test), then sends the agent on with 0x9C; the agent moves
// to the other node with its session, and nothing ends.
func TestCluster_DrainFinishesCommandsInFlightAndMovesAgents(t *testing.T) {
	hp := newHeldPatch(t, "60s")
	config, key, started, hold := hp.config, hp.key, hp.started, hp.hold

	c := newTwoNodes(t)
	agentID, proc := c.runAgent(t, "cam-gw-2", config)
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	survivor := c.other(holder)
	sess, token := c.activate(t, holder, agentID)

	bundle, err := patch.Build(patch.Manifest{ID: "HF-DRAIN", Version: "1.1.0", Root: "streamer", Files: []patch.File{{Target: "bin/run.sh", Mode: "0755"}}},
		map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v2\n")}, key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(hold, nil, 0o644))
	type outcome struct {
		status string
		err    error
	}
	done := make(chan outcome, 1)
	go func() {
		cl := *holder.api
		cl.SessionToken = token
		var res struct {
			Status string `json:"status"`
		}
		err := cl.DoRaw(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/patch", "application/octet-stream", bundle, &res)
		done <- outcome{res.Status, err}
	}()
	testenv.Eventually(t, 15*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "the patch's health check runs")

	ready, err := http.Get(holder.proc.APIURL + "/readyz")
	require.NoError(t, err)
	ready.Body.Close()
	require.Equal(t, http.StatusOK, ready.StatusCode)
	mark := proc.LineCount()
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGTERM))
	// A draining node is not ready: the load balancer sends calls to the
	// others.
	testenv.Eventually(t, 10*time.Second, func() bool {
		resp, err := http.Get(holder.proc.APIURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, "the draining node fails /readyz")
	// The patch is in flight: the draining node keeps the agent.
	select {
	case o := <-done:
		t.Fatalf("the patch finished before its health check was let go: %+v", o)
	default:
	}
	assert.Equal(t, holder, c.holder(t, agentID), "the agent stays while its command is in flight")

	require.NoError(t, os.Remove(hold))
	select {
	case o := <-done:
		require.NoError(t, o.err, "the command in flight completes on the draining node")
		assert.Equal(t, "ok", o.status)
	case <-time.After(30 * time.Second):
		t.Fatal("the patch did not complete")
	}
	proc.WaitLog(t, mark, "broker asked this agent to use another server", 1, 10*time.Second)
	proc.WaitLog(t, mark, "connected to broker", 1, 10*time.Second)
	select {
	case <-holder.proc.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the drained node did not exit")
	}

	res, err := c.ping(survivor, sess.ID, token)
	require.NoError(t, err, "the next command through the node that took the agent")
	assert.Equal(t, "ok", res.Status)
	assert.Equal(t, survivor, c.holder(t, agentID))
	got := c.session(t, survivor, sess.ID)
	assert.Nil(t, got.EndedAt, "nothing ended the session")
	assert.True(t, got.Active)
	assert.Equal(t, [][2]string{{holder.id, survivor.id}}, c.moves(t, sess.ID), "agent.moved audited, from the drained node to the other")

	var left bool
	require.NoError(t, c.pool.QueryRow(context.Background(), "SELECT left_at IS NOT NULL FROM nodes WHERE id = $1", holder.id).Scan(&left))
	assert.True(t, left, "the drained node left the nodes table")
	var status string
	require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT c.status FROM commands c WHERE c.session_id = $1 AND c.name = 'apply_patch'`, sess.ID).Scan(&status))
	assert.Equal(t, "succeeded", status)
}

// Two real brokers, the agent configured with both: while one answers
// every connection with CONNACK 0x9C (use another server), the agent,
// whichever it tries first, moves on to the other at once and connects
// there, every time.
func TestAgent_ConnackUseAnotherServerMovesOnToTheNextURL(t *testing.T) {
	a := newSupportEnv(t, nil)
	envB := &testenv.Env{DataDir: testenv.TempDir(t), DatabaseURL: a.env.DatabaseURL}
	b := testenv.StartInProcess(t, envB, map[string]any{"command-signing-key": filepath.Join(a.env.DataDir, "command-signing.key")})

	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, a.do(t, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": a.tenant, "name": "cam-gw-3"}, &tok))
	dir := filepath.Join(t.TempDir(), "cam-gw-3")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", a.srv.APIURL(), "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)

	a.srv.Broker().Redirect(true)
	proc := testenv.StartAgent(t, dir, "ARGUS_AGENT_BROKER_URLS="+a.srv.MQTTURL()+","+b.MQTTURL())
	bURL := "url=" + b.MQTTURL()
	mark := proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	assert.Contains(t, proc.Logs(), bURL)
	// The order is random at each connect: reconnect until the redirecting
	// broker has been tried first (1 in 2 each time).
	for round := 0; !strings.Contains(proc.Logs(), "broker sent this agent to another server"); round++ {
		require.Less(t, round, 30, "the redirecting broker was never tried first")
		testenv.Eventually(t, 5*time.Second, func() bool { return b.Broker().Connected(st.AgentID) }, "agent on the other broker")
		b.Broker().Disconnect(st.AgentID, packets.ErrAdministrativeAction)
		mark = proc.WaitLog(t, mark, "connected to broker", 1, 10*time.Second)
		assert.Contains(t, proc.Logs(), bURL)
	}
	assert.NotContains(t, proc.Logs(), "connected to broker\" agent="+st.AgentID+" url="+a.srv.MQTTURL())
	assert.False(t, a.srv.Broker().Connected(st.AgentID), "never held by the redirecting broker")
}

// A node that restarts while another node waits for an agent's
// activation ack leaves that activation alone: it is the other node's to
// complete or to end.
func TestCluster_RestartLeavesAnotherNodesActivationInProgress(t *testing.T) {
	c := newTwoNodes(t)
	agentID, proc := c.runAgent(t, "cam-gw-4", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	restarted := c.other(holder)

	// The agent freezes, so the activation waits for its ack.
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGSTOP))
	type outcome struct {
		sess apiclient.Session
		err  error
	}
	done := make(chan outcome, 1)
	go func() {
		var res struct {
			Session apiclient.Session `json:"session"`
		}
		err := holder.api.Do(context.Background(), "POST", "/v1/support/sessions",
			map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-8: during a rolling restart"}, &res)
		done <- outcome{res.Session, err}
	}()
	var sessID string
	testenv.Eventually(t, 5*time.Second, func() bool {
		return c.pool.QueryRow(context.Background(), "SELECT id FROM support_sessions WHERE agent_id = $1", agentID).Scan(&sessID) == nil
	}, "the session row committed")

	restarted.proc.Stop(t)
	restarted.proc = testenv.StartServer(t, restarted.dataDir, restarted.env)
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGCONT))

	o := <-done
	require.NoError(t, o.err, "the activation completes on its node")
	assert.Equal(t, sessID, o.sess.ID)
	got := c.session(t, holder, sessID)
	assert.Nil(t, got.EndedAt, "the restarted node did not end it")
	assert.Empty(t, got.EndReason)
}

// The node activating a session dies before the agent's ack: the other
// node's sweep ends the session once no node can still be waiting for
// the ack, so the agent is not held busy until the session's expiry.
func TestCluster_ActivationWhoseNodeDiedIsEndedBySweep(t *testing.T) {
	c := newTwoNodes(t)
	agentID, proc := c.runAgent(t, "cam-gw-5", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	survivor := c.other(holder)

	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGSTOP))
	go func() {
		_ = holder.api.Do(context.Background(), "POST", "/v1/support/sessions",
			map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-9"}, nil)
	}()
	var sessID string
	testenv.Eventually(t, 5*time.Second, func() bool {
		return c.pool.QueryRow(context.Background(), "SELECT id FROM support_sessions WHERE agent_id = $1", agentID).Scan(&sessID) == nil
	}, "the session row committed")
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGKILL))
	<-holder.proc.Done()
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGCONT))

	// The ack wait (5 s) and its margin (10 s), then one sweep.
	testenv.Eventually(t, 25*time.Second, func() bool { return c.session(t, survivor, sessID).EndedAt != nil }, "the unacknowledged session ended")
	assert.Equal(t, "agent_did_not_acknowledge", c.session(t, survivor, sessID).EndReason)
}

// An activation through one node for an agent held by the other ends by
// who stayed silent: the agent (frozen; its node handed the activation
// over) is agent_did_not_acknowledge; the holding node itself (frozen with
// its agent, so the request is never answered) is agent_unreachable. Each
// is the refusal's code and the session's audited end reason.
func TestCluster_ActivationSilentHolderIsUnreachableSilentAgentDidNotAcknowledge(t *testing.T) {
	c := newTwoNodes(t)
	agentID, proc := c.runAgent(t, "cam-gw-6", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	caller := c.other(holder)
	activate := func(reason string) (string, error) {
		err := caller.api.Do(context.Background(), "POST", "/v1/support/sessions",
			map[string]string{"tenant": "acme", "agent": agentID, "reason": reason}, nil)
		var id string
		require.NoError(t, c.pool.QueryRow(context.Background(), "SELECT id FROM support_sessions WHERE agent_id = $1 AND reason = $2", agentID, reason).Scan(&id))
		return id, err
	}
	ended := func(sessionID string) (reason string) {
		require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT detail->>'end_reason' FROM audit_log
			WHERE action = 'support.session.end' AND session_id = $1`, sessionID).Scan(&reason))
		return reason
	}

	// A failing check must not leave a process stopped.
	t.Cleanup(func() {
		_ = proc.Cmd.Process.Signal(syscall.SIGCONT)
		_ = holder.proc.Cmd.Process.Signal(syscall.SIGCONT)
	})

	mark := proc.LineCount()
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGSTOP))
	id, err := activate("INC-10: agent frozen")
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGCONT))
	require.Error(t, err)
	assert.Equal(t, "agent_did_not_acknowledge", apiCode(err))
	assert.Equal(t, "agent_did_not_acknowledge", c.session(t, caller, id).EndReason)
	assert.Equal(t, "agent_did_not_acknowledge", ended(id))

	// Its node dropped the frozen agent (past its keepalive): it connects
	// again, to either node.
	proc.WaitLog(t, mark, "connected to broker", 1, 15*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return c.holder(t, agentID) != nil }, "the agent's new connection recorded")
	holder = c.holder(t, agentID)
	caller = c.other(holder)

	// The agent is frozen too, or it would notice and move to the caller.
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGSTOP))
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGSTOP))
	id, err = activate("INC-11: holder frozen")
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGCONT))
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGCONT))
	require.Error(t, err)
	assert.Equal(t, "agent_unreachable", apiCode(err))
	assert.Equal(t, "agent_unreachable", c.session(t, caller, id).EndReason)
	assert.Equal(t, "agent_unreachable", ended(id))
}
