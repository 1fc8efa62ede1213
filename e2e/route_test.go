package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/patch"
	"github.com/argus-remote/argus/topics"
)

const routeSecret = "route-test-cluster-secret-0123456789abcdef"

// routedPair is a cluster of two in-process servers on one database, routed
// to each other over their embedded NATS: a is the node the operator
// calls, b holds the agents under test.
type routedPair struct{ a, b *supportEnv }

func clusterKeys(id, listen, peer string) map[string]any {
	return map[string]any{"node-id": id, "cluster-name": "route", "cluster-secret": routeSecret,
		"cluster-listen": listen, "cluster-peers": peer}
}

// newRoutedPair starts the two nodes; extraA and extraB are more of their
// settings.
func newRoutedPair(t *testing.T, extraA, extraB map[string]any) *routedPair {
	t.Helper()
	la, lb := testenv.FreeAddr(t), testenv.FreeAddr(t)
	oa := clusterKeys("node-a", la, lb)
	for k, v := range extraA {
		oa[k] = v
	}
	a := newSupportEnv(t, oa)
	envB := &testenv.Env{DataDir: testenv.TempDir(t), DatabaseURL: a.env.DatabaseURL}
	o := clusterKeys("node-b", lb, la)
	o["remote-support-enabled"], o["remote-support-operator-cidrs"], o["ops-token"] = true, "127.0.0.1/32", opsToken
	// Every node signs with the one key the agents pin.
	o["command-signing-key"] = filepath.Join(a.env.DataDir, "command-signing.key")
	for k, v := range extraB {
		o[k] = v
	}
	srvB := testenv.StartInProcessWith(t, envB, o, nil)
	api := *a.api
	api.BaseURL = srvB.APIURL()
	b := &supportEnv{inProcess: &inProcess{env: envB, srv: srvB}, api: &api, tenant: a.tenant, key: a.key,
		acks: make(chan topics.ActivationAckMsg, 64)}
	require.NoError(t, srvB.Broker().Server().Subscribe(topics.AgentFilter(topics.ActivationAck), 90, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var ack topics.ActivationAckMsg
		if json.Unmarshal(pk.Payload, &ack) == nil {
			b.acks <- ack
		}
	}))
	testenv.Eventually(t, 10*time.Second, func() bool {
		return a.srv.Wire().Reachable(context.Background(), "node-b", 200*time.Millisecond) &&
			srvB.Wire().Reachable(context.Background(), "node-a", 200*time.Millisecond)
	}, "the nodes are routed to each other")
	return &routedPair{a: a, b: b}
}

// heldBy waits until the record says node holds the agent.
func (n *routedPair) heldBy(t *testing.T, agentID, node string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() bool {
		var got string
		err := n.a.srv.Database().Pool.QueryRow(context.Background(), "SELECT node_id FROM agent_presence WHERE agent_id = $1", agentID).Scan(&got)
		return err == nil && got == node
	}, "presence of "+agentID+" on "+node)
}

// auditTrail is a session's audit in chain order, rows of audit_log
// joined with their events, with what varies
// between two runs (ids, times, durations, digests of what differs) left
// out: the action, its outcome, and the command, status and code.
func auditTrail(t *testing.T, s *supportEnv, sessionID string) []string {
	t.Helper()
	ctx := context.Background()
	pool := s.srv.Database().Pool
	rows, err := pool.Query(ctx, `SELECT a.action || ' ' || a.outcome || ' ' || COALESCE(detail->>'command', detail->>'patch_id', '') || ' ' ||
			COALESCE(detail->>'status', '') || ' ' || COALESCE(detail->>'code', '')
		FROM audit_log a JOIN events e USING (id) WHERE a.session_id = $1 ORDER BY e.seq`, sessionID)
	require.NoError(t, err)
	var trail []string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		trail = append(trail, line)
	}
	require.NoError(t, rows.Err())
	var events int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE payload->>'session_id' = $1", sessionID).Scan(&events))
	assert.Equal(t, len(trail), events, "both trails hold every action of session %s", sessionID)
	return trail
}

func (s *supportEnv) sendPatch(t *testing.T, sessionID, token string, bundle []byte) (string, json.RawMessage) {
	t.Helper()
	c := *s.api
	c.SessionToken = token
	var res struct {
		Status string `json:"status"`
		Error  *struct {
			Code string `json:"code"`
		} `json:"error"`
		Data json.RawMessage `json:"data"`
	}
	if err := c.DoRaw(context.Background(), "POST", "/v1/support/sessions/"+sessionID+"/patch", "application/octet-stream", bundle, &res); err != nil {
		return apiCode(err), nil
	}
	if res.Error != nil {
		return res.Error.Code, nil
	}
	return res.Status, res.Data
}

// TestRoute_EveryCommandThroughAnotherNode: an operator on node a
// activates and runs every command and a patch against an agent held by
// node b. Each succeeds with the same answer, and leaves the same audit,
// as against an agent held by node a itself; the chain is one.
func TestRoute_EveryCommandThroughAnotherNode(t *testing.T) {
	h := newHostFixture(t)
	// A file at the agent's read limit: its result is well over NATS's
	// default 1 MiB.
	large := make([]byte, agent.MaxFileBytes)
	_, _ = rand.Read(large)
	require.NoError(t, os.WriteFile(filepath.Join(h.root, "large.bin"), large, 0o644))
	largeSum := sha256.Sum256(large)

	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	pub, patchKey, _ := ed25519.GenerateKey(nil)
	config := func(name string) string {
		dir := t.TempDir()
		root := filepath.Join(dir, "streamer")
		require.NoError(t, os.MkdirAll(filepath.Join(root, "bin"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, "bin", "run.sh"), []byte("#!/bin/sh\necho v1\n"), 0o644))
		pubFile := filepath.Join(dir, "patch-signing.pub")
		require.NoError(t, os.WriteFile(pubFile, []byte(patch.EncodePublic(pub)+"\n"), 0o644))
		body, err := os.ReadFile(h.config)
		require.NoError(t, err)
		body = append(body, fmt.Sprintf("patch-keys: [%s]\npatch-roots:\n  streamer: %s\n", pubFile, root)...)
		path := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(path, body, 0o600))
		return path
	}
	remote, remoteDir, _ := n.b.runConfiguredAgent(t, "cam-gw-b", config("b"))
	local, _, _ := n.a.runConfiguredAgent(t, "cam-gw-a", config("a"))
	n.heldBy(t, remote, "node-b")
	n.heldBy(t, local, "node-a")

	// Activation through a of the agent on b: opened there, acknowledged
	// by the agent, and the session acked on record.
	remoteSess, remoteTok := n.a.activate(t, remote, "")
	require.NotNil(t, remoteSess.AckedAt, "the agent on node b acknowledged")
	assert.Equal(t, topics.StateActive, n.b.awaitAck(t, remoteSess.ID).State)
	assert.True(t, n.b.srv.Policy().Active(remote), "the commands topic is open on the holder")
	assert.False(t, n.a.srv.Policy().Active(remote), "and not on the node that was called")
	testenv.Eventually(t, 5*time.Second, func() bool {
		st, err := agent.ReadStatus(remoteDir)
		return err == nil && st.State == topics.StateActive && st.SessionID == remoteSess.ID
	}, "the agent says it is active")
	localSess, localTok := n.a.activate(t, local, "")

	bundle, err := patch.Build(patch.Manifest{ID: "HF-ROUTE", Version: "1.1.0", Root: "streamer", Files: []patch.File{{Target: "bin/run.sh"}}},
		map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v2\n")}, patchKey)
	require.NoError(t, err)
	commands := []struct {
		name string
		args any
	}{
		{"ping", nil},
		{"tail_log", map[string]any{"log": "streamer", "lines": 5}},
		{"read_file", map[string]string{"path": filepath.Join(h.root, "config.yaml")}},
		{"get_capabilities", nil},
		{"camera_view", map[string]string{"camera": "test"}},
	}
	results := map[string][]apiclient.CommandResult{}
	for _, c := range []struct{ sess, tok string }{{remoteSess.ID, remoteTok}, {localSess.ID, localTok}} {
		for _, cmd := range commands {
			r := n.a.run(t, c.sess, c.tok, cmd.name, cmd.args)
			require.Equal(t, "ok", r.Status, "%s: %+v", cmd.name, r.Error)
			results[cmd.name] = append(results[cmd.name], r)
		}
		code, _ := n.a.sendPatch(t, c.sess, c.tok, bundle)
		require.Equal(t, "ok", code, "the patch")
	}
	for _, name := range []string{"tail_log", "read_file"} {
		assert.JSONEq(t, string(results[name][1].Data), string(results[name][0].Data), "%s answers the same through node b", name)
	}

	// The largest file the agent reads crosses the nodes whole.
	r := n.a.run(t, remoteSess.ID, remoteTok, "read_file", map[string]string{"path": filepath.Join(h.root, "large.bin")})
	require.Equal(t, "ok", r.Status, "%+v", r.Error)
	assert.Greater(t, len(r.Data), 4<<20, "the result is over NATS's default max_payload")
	var file agent.FileResult
	require.NoError(t, json.Unmarshal(r.Data, &file))
	assert.Equal(t, hex.EncodeToString(largeSum[:]), file.SHA256)
	got, err := base64.StdEncoding.DecodeString(file.ContentBase64)
	require.NoError(t, err)
	assert.Equal(t, largeSum, sha256.Sum256(got), "the content arrived whole")

	remoteTrail, localTrail := auditTrail(t, n.a, remoteSess.ID), auditTrail(t, n.a, localSess.ID)
	assert.Equal(t, localTrail, remoteTrail[:len(remoteTrail)-2], "the audit through node b is the audit on one node")
	assert.Equal(t, []string{"support.command.requested success read_file  ", "support.command.completed success read_file succeeded "},
		remoteTrail[len(remoteTrail)-2:])
	var rep struct {
		Clean bool `json:"clean"`
	}
	require.NoError(t, n.b.do(t, "POST", "/v1/audit/verify", map[string]string{"since": "1h"}, &rep))
	assert.True(t, rep.Clean, "one unbroken chain")
}

// TestRoute_HolderGoneIsUnreachable: the node the record says holds the
// agent no longer answers (its NATS is gone; its presence row is left).
// A command through the other node is retried once and refused
// agent_unreachable, with both actions on both trails and nothing left
// requested; an activation is refused agent_unreachable too, and its
// committed session is ended, not left live.
func TestRoute_HolderGoneIsUnreachable(t *testing.T) {
	// The retry waits this long for the agent to be recorded elsewhere.
	n := newRoutedPair(t, map[string]any{"command-reconnect-wait": "2s"}, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-b")
	n.heldBy(t, remote, "node-b")
	sess, tok := n.a.activate(t, remote, "")
	require.Equal(t, "ok", n.a.run(t, sess.ID, tok, "ping", nil).Status)

	n.b.srv.Wire().Close()
	testenv.Eventually(t, 10*time.Second, func() bool { return len(n.a.srv.Wire().Peers()) == 0 }, "node a has lost its route to b")
	n.heldBy(t, remote, "node-b")

	c := *n.a.api
	c.SessionToken = tok
	var res apiclient.CommandResult
	started := time.Now()
	err := c.Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/commands", map[string]any{"name": "ping"}, &res)
	require.Error(t, err)
	assert.Equal(t, "agent_unreachable", apiCode(err))
	assert.Less(t, time.Since(started), 10*time.Second, "refused after one retry, not at the command timeout")

	ctx := context.Background()
	pool := n.a.srv.Database().Pool
	var status, code string
	require.NoError(t, pool.QueryRow(ctx, `SELECT status, COALESCE(error_code, '') FROM commands WHERE session_id = $1 ORDER BY requested_at DESC LIMIT 1`, sess.ID).
		Scan(&status, &code))
	assert.Equal(t, "failed", status)
	assert.Equal(t, "agent_unreachable", code)
	var requested int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE session_id = $1 AND status = 'requested'`, sess.ID).Scan(&requested))
	assert.Zero(t, requested, "nothing is left requested")
	trail := auditTrail(t, n.a, sess.ID)
	require.GreaterOrEqual(t, len(trail), 2)
	assert.Equal(t, []string{"support.command.requested success ping  ", "support.command.completed failure ping failed agent_unreachable"},
		trail[len(trail)-2:])

	// An activation: committed, not opened anywhere, ended.
	require.NoError(t, n.a.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	err = n.a.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": n.a.tenant, "agent": remote, "reason": "INC-2"}, nil)
	require.Error(t, err)
	assert.Equal(t, "agent_unreachable", apiCode(err))
	var live int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM support_sessions WHERE agent_id = $1 AND ended_at IS NULL`, remote).Scan(&live))
	assert.Zero(t, live, "the unreachable activation's session is ended")
	var reason string
	require.NoError(t, pool.QueryRow(ctx, `SELECT end_reason FROM support_sessions WHERE agent_id = $1 AND reason = 'INC-2'`, remote).Scan(&reason))
	assert.Equal(t, "agent_unreachable", reason)
}

// An activation that reaches the holding node past its deadline (the
// holder was frozen with it, say) finds its sender gone: that node opens
// nothing and says so, since the sender ends the session unreachable.
func TestCluster_ActivationPastItsDeadlineIsNotOpened(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-late")
	n.heldBy(t, remote, "node-b")
	ctx := context.Background()
	var tenantID string
	require.NoError(t, n.a.srv.Database().Pool.QueryRow(ctx, "SELECT tenant_id::text FROM agents WHERE id = $1", remote).Scan(&tenantID))

	const late = "5d6f0c1e-8a53-4c1b-9d7e-2f4a8b6c0e11"
	now := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ans, err := n.a.srv.Wire().Deliver(rctx, "node-b", cluster.Delivery{Kind: cluster.DeliverActivation, AgentID: remote,
		SessionID: late, TenantID: tenantID, Operator: "alice", Reason: "INC-12",
		CreatedAt: now.Add(-10 * time.Second), ExpiresAt: now.Add(30 * time.Minute), Deadline: now.Add(-time.Second)})
	require.NoError(t, err)
	assert.Equal(t, cluster.Expired, ans.Code)
	assert.False(t, n.b.srv.Policy().Active(remote), "the agent's commands were not opened")
	// An activation after it is acked after anything the agent was handed
	// before: its ack is the barrier behind which a late one would be.
	sess, _ := n.a.activate(t, remote, "")
	for seen := ""; seen != sess.ID; {
		select {
		case ack := <-n.b.acks:
			require.NotEqual(t, late, ack.SessionID, "the agent was handed the late activation")
			seen = ack.SessionID
		case <-rctx.Done():
			t.Fatal("the ack of the activation after it was not heard")
		}
	}
}

// A command that reaches the holding node past its deadline is not handed
// to the agent: its sender has stopped waiting for it.
func TestCluster_CommandPastItsDeadlineIsNotSent(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-latecmd")
	n.heldBy(t, remote, "node-b")
	sess, tok := n.a.activate(t, remote, "")
	require.Equal(t, "ok", n.a.run(t, sess.ID, tok, "ping", nil).Status)

	// What b's broker publishes on agents' command topics, in order.
	sent := make(chan string, 16)
	require.NoError(t, n.b.srv.Broker().Server().Subscribe(topics.AgentFilter(topics.Commands), 92, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		sent <- string(pk.Properties.CorrelationData)
	}))
	const late = "0b7e9f2a-3c41-4d5e-8f60-7a1b2c3d4e5f"
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ans, err := n.a.srv.Wire().Deliver(rctx, "node-b", cluster.Delivery{Kind: cluster.DeliverCommand, AgentID: remote,
		SessionID: sess.ID, CommandID: late, Name: "ping", Deadline: time.Now().Add(-time.Second), Payload: []byte(`{}`)})
	require.NoError(t, err)
	var res topics.ResultMsg
	require.NoError(t, json.Unmarshal(ans.Body, &res), "code %q", ans.Code)
	require.NotNil(t, res.Error)
	assert.Equal(t, "agent_timeout", res.Error.Code)
	assert.Contains(t, res.Error.Message, "not sent")

	// A command after it is published after it: the barrier.
	require.Equal(t, "ok", n.a.run(t, sess.ID, tok, "ping", nil).Status)
	select {
	case id := <-sent:
		assert.NotEqual(t, late, id, "the late command was published to the agent")
	case <-rctx.Done():
		t.Fatal("the ping after it was not seen on the command topic")
	}
}

// A session opened through node a is ended through node b, and the
// broadcast of its end is lost: a new activation of the agent through a,
// at once, opens. a confirms its memory of a live session against the
// record before refusing agent_busy, and applies the end it finds there,
// rather than refusing until its own check runs.
func TestCluster_ActivationAfterAnEndWhoseBroadcastWasLostOpens(t *testing.T) {
	t.Setenv("ARGUS_TEST_DROP_BROADCASTS", "1") // both nodes lose what they broadcast
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-stale")
	n.heldBy(t, remote, "node-b")
	sess, tok := n.a.activate(t, remote, "")
	ended := []string{}
	// Rounds: a's check, every few seconds, is not what lets them through.
	for round := 0; round < 3; round++ {
		require.Equal(t, "ok", n.a.run(t, sess.ID, tok, "ping", nil).Status)
		require.NoError(t, n.b.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
		ended = append(ended, sess.ID)
		sess, tok = n.a.activate(t, remote, "")
	}
	assert.Equal(t, "ok", n.a.run(t, sess.ID, tok, "ping", nil).Status, "the session opened last is live")
	for _, id := range ended {
		var reason string
		require.NoError(t, n.a.srv.Database().Pool.QueryRow(context.Background(), "SELECT end_reason FROM support_sessions WHERE id = $1", id).Scan(&reason))
		assert.Equal(t, "deactivated", reason)
	}
}

// TestRoute_HolderThatNoLongerHoldsIsRetriedThenUnreachable: the record
// says node b holds the agent, and b answers that it does not (its
// disconnect's write was lost, say). The command is tried again after a
// fresh read, then refused agent_unreachable, completed on both trails.
func TestRoute_HolderThatNoLongerHoldsIsRetriedThenUnreachable(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, proc := n.b.runAgent(t, "cam-gw-b")
	n.heldBy(t, remote, "node-b")
	sess, tok := n.a.activate(t, remote, "")
	proc.Stop()
	ctx := context.Background()
	pool := n.a.srv.Database().Pool
	testenv.Eventually(t, 10*time.Second, func() bool { return !n.b.online(remote) }, "the agent has left node b")
	testenv.Eventually(t, 10*time.Second, func() bool {
		var held int
		err := pool.QueryRow(ctx, "SELECT count(*) FROM agent_presence WHERE agent_id = $1", remote).Scan(&held)
		return err == nil && held == 0
	}, "its disconnect is recorded")
	_, err := pool.Exec(ctx, `INSERT INTO agent_presence (agent_id, node_id, connected_at, remote_addr, epoch)
		SELECT id, 'node-b', now(), '127.0.0.1:1', presence_epoch FROM agents WHERE id = $1`, remote)
	require.NoError(t, err, "a stale record of node b holding it")

	_, err = n.a.command(t, sess.ID, tok, "ping")
	require.Error(t, err)
	assert.Equal(t, "agent_unreachable", apiCode(err))
	trail := auditTrail(t, n.a, sess.ID)
	assert.Equal(t, []string{"support.command.requested success ping  ", "support.command.completed failure ping failed agent_unreachable"},
		trail[len(trail)-2:])
	var requested int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE session_id = $1 AND status = 'requested'`, sess.ID).Scan(&requested))
	assert.Zero(t, requested, "nothing is left requested")
}

// TestRoute_SlowCommandHoldsUpNoOtherThroughTheHolder: the holder serves
// each delivery on its own, so a command sent while another to the same
// holder waits for its agent's answer is delivered and answered first.
func TestRoute_SlowCommandHoldsUpNoOtherThroughTheHolder(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	f := n.b.fakeAgent(t, "fake-b")
	n.heldBy(t, f.e.AgentID, "node-b")
	f.subscribe(t, topics.Activation)
	done := n.a.activateAsync(t, f.e.AgentID)
	var act topics.ActivationMsg
	f.next(t, n.b, topics.Activation, topics.PurposeActivation, &act, func() bool { return act.State == topics.StateActive })
	f.subscribe(t, topics.Commands)
	f.publish(t, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: f.e.AgentID, SessionID: act.SessionID, State: topics.StateActive})
	a := <-done
	require.Empty(t, a.code, "activated through node a")

	slow := n.a.commandAsync(t, a, "ping")
	var first topics.CommandMsg
	f.next(t, n.b, topics.Commands, topics.PurposeCommand, &first, func() bool { return first.Name == "ping" })
	// The first is left unanswered; the second arrives and is answered.
	fast := n.a.commandAsync(t, a, "agent_info")
	var second topics.CommandMsg
	f.next(t, n.b, topics.Commands, topics.PurposeCommand, &second, func() bool { return second.Name == "agent_info" })
	f.publish(t, topics.Results, topics.ResultMsg{V: topics.Version, CommandID: second.ID, SessionID: second.SessionID, AgentID: f.e.AgentID,
		Status: topics.ResultOK, Data: json.RawMessage(`{"version":"fake"}`)})
	select {
	case ans := <-fast:
		require.Empty(t, ans.code)
		assert.Equal(t, "ok", ans.res.Status)
	case ans := <-slow:
		t.Fatalf("the first command ended (%s) before the second's answer came back", ans.code)
	case <-time.After(10 * time.Second):
		t.Fatal("the second command waited behind the first")
	}
	f.publish(t, topics.Results, topics.ResultMsg{V: topics.Version, CommandID: first.ID, SessionID: first.SessionID, AgentID: f.e.AgentID,
		Status: topics.ResultOK, Data: json.RawMessage(`{"pong":true}`)})
	ans := <-slow
	require.Empty(t, ans.code)
	assert.Equal(t, "ok", ans.res.Status)
}

// TestRoute_KillSwitchOnTheHolderRefusesActivationElsewhere: an agent's
// kill switch is known to the node holding it; an activation through
// another node is refused agent_kill_switch_engaged before anything
// commits, as on one node.
func TestRoute_KillSwitchOnTheHolderRefusesActivationElsewhere(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, dir, proc := n.b.runAgent(t, "cam-gw-b")
	n.heldBy(t, remote, "node-b")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "kill-switch", "engage", "--state-dir", dir)
	require.NoError(t, err, stderr)
	proc.WaitLog(t, 0, "KILL SWITCH ENGAGED", 1, 5*time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool { return n.b.srv.Sessions().Fleet.KillSwitch(remote) }, "node b knows")

	err = n.a.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": n.a.tenant, "agent": remote, "reason": "INC-3"}, nil)
	assert.Equal(t, "agent_kill_switch_engaged", apiCode(err))
	ctx := context.Background()
	pool := n.a.srv.Database().Pool
	var sessions, denied int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM support_sessions WHERE agent_id = $1", remote).Scan(&sessions))
	assert.Zero(t, sessions, "nothing committed")
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.activate' AND outcome = 'denied'
		AND agent_id = $1 AND detail->>'code' = 'agent_kill_switch_engaged'`, remote).Scan(&denied))
	assert.Equal(t, 1, denied, "the refusal is audited")
}

// TestRoute_ResultOverTheClustersPayloadIsAFailureNotASilence: a broker
// configured for packets larger than the cluster carries lets an agent
// answer with more than can cross; the command fails at once with
// result_too_large, rather than timing out on an answer that never comes.
func TestRoute_ResultOverTheClustersPayloadIsAFailureNotASilence(t *testing.T) {
	n := newRoutedPair(t, nil, map[string]any{"mqtt-max-packet-size": 15 << 20})
	n.a.consentAndArm(t)
	f := n.b.fakeAgent(t, "fake-b")
	n.heldBy(t, f.e.AgentID, "node-b")
	f.subscribe(t, topics.Activation)
	done := n.a.activateAsync(t, f.e.AgentID)
	var act topics.ActivationMsg
	f.next(t, n.b, topics.Activation, topics.PurposeActivation, &act, func() bool { return act.State == topics.StateActive })
	f.subscribe(t, topics.Commands)
	f.publish(t, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: f.e.AgentID, SessionID: act.SessionID, State: topics.StateActive})
	a := <-done
	require.Empty(t, a.code)

	started := time.Now()
	answer := n.a.commandAsync(t, a, "agent_info")
	var cmd topics.CommandMsg
	f.next(t, n.b, topics.Commands, topics.PurposeCommand, &cmd, func() bool { return cmd.Name == "agent_info" })
	big, _ := json.Marshal(map[string]string{"blob": strings.Repeat("x", 13<<20)})
	f.publish(t, topics.Results, topics.ResultMsg{V: topics.Version, CommandID: cmd.ID, SessionID: cmd.SessionID, AgentID: f.e.AgentID,
		Status: topics.ResultOK, Data: big})
	ans := <-answer
	assert.Less(t, time.Since(started), 10*time.Second, "not at the command timeout")
	require.Empty(t, ans.code, "%+v", ans.err)
	require.NotNil(t, ans.res.Error)
	assert.Equal(t, "result_too_large", ans.res.Error.Code)
	var status, code string
	require.NoError(t, n.a.srv.Database().Pool.QueryRow(context.Background(), "SELECT status, error_code FROM commands WHERE id = $1", cmd.ID).Scan(&status, &code))
	assert.Equal(t, []string{"failed", "result_too_large"}, []string{status, code})
}

// TestRoute_CommandWaitsForAnAgentBetweenNodes: the agent of a live
// session is connected nowhere for a moment (restarting, or moving): a
// command through another node waits for it to be back, then goes to the
// node that holds it, rather than failing.
func TestRoute_CommandWaitsForAnAgentBetweenNodes(t *testing.T) {
	n := newRoutedPair(t, map[string]any{"command-reconnect-wait": "10s"}, nil)
	n.a.consentAndArm(t)
	remote, dir, proc := n.b.runAgent(t, "cam-gw-b")
	n.heldBy(t, remote, "node-b")
	sess, tok := n.a.activate(t, remote, "")

	proc.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool {
		var held int
		err := n.a.srv.Database().Pool.QueryRow(context.Background(), "SELECT count(*) FROM agent_presence WHERE agent_id = $1", remote).Scan(&held)
		return err == nil && held == 0
	}, "the agent is connected nowhere")
	type answer struct {
		res apiclient.CommandResult
		err error
	}
	done := make(chan answer, 1)
	go func() {
		c := *n.a.api
		c.SessionToken = tok
		var res apiclient.CommandResult
		err := c.Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/commands", map[string]any{"name": "ping"}, &res)
		done <- answer{res, err}
	}()
	testenv.Eventually(t, 5*time.Second, func() bool { return n.a.srv.Sessions().AwaitingAgents() == 1 }, "the command waits for the agent")
	testenv.StartAgent(t, dir)
	select {
	case a := <-done:
		require.NoError(t, a.err)
		assert.Equal(t, "ok", a.res.Status)
	case <-time.After(30 * time.Second):
		t.Fatal("the command did not finish")
	}
	n.heldBy(t, remote, "node-b")
	assert.Zero(t, n.a.srv.Sessions().AwaitingAgents())
}

// TestRoute_MeasurePingLatency reports the audited ping's round trip
// through the API when the agent is held by the node called and when it
// is held by the other one. A measurement, not a check: it runs with
// ARGUS_MEASURE=1 only.
func TestRoute_MeasurePingLatency(t *testing.T) {
	if os.Getenv("ARGUS_MEASURE") != "1" {
		t.Skip("a measurement: set ARGUS_MEASURE=1")
	}
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-b")
	local, _, _ := n.a.runAgent(t, "cam-gw-a")
	n.heldBy(t, remote, "node-b")
	n.heldBy(t, local, "node-a")
	for _, c := range []struct{ name, agent string }{{"same node", local}, {"other node", remote}} {
		sess, tok := n.a.activate(t, c.agent, "")
		const runs = 300
		d := make([]time.Duration, 0, runs)
		for range runs {
			start := time.Now()
			require.Equal(t, "ok", n.a.run(t, sess.ID, tok, "ping", nil).Status)
			d = append(d, time.Since(start))
		}
		slices.Sort(d)
		t.Logf("%s: audited ping p50 %v p99 %v (%d runs)", c.name, d[runs/2].Round(10*time.Microsecond), d[runs*99/100].Round(10*time.Microsecond), runs)
	}
}

// An activation that reaches the holding node after its session's end
// was applied there (each NATS subscription runs its own callbacks, so an
// end's broadcast can overtake the delivery sent before it) does not open
// the ended session: the holder reads the record once it has opened it,
// as it does for an agent that moves in.
func TestCluster_ActivationOvertakenByItsEndIsNotOpened(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-overtaken")
	n.heldBy(t, remote, "node-b")
	sess, _ := n.a.activate(t, remote, "")
	require.NoError(t, n.a.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	testenv.Eventually(t, 5*time.Second, func() bool { return !n.b.srv.Policy().Active(remote) }, "the end applied on node B")

	// The activation's delivery, arriving now, well within its deadline.
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ans, err := n.a.srv.Wire().Deliver(rctx, "node-b", cluster.Delivery{Kind: cluster.DeliverActivation, AgentID: remote,
		SessionID: sess.ID, TenantID: sess.TenantID, Operator: sess.Operator, Reason: sess.Reason,
		CreatedAt: sess.CreatedAt, ExpiresAt: sess.ExpiresAt, Deadline: time.Now().Add(3 * time.Second)})
	require.NoError(t, err)
	assert.Equal(t, cluster.Ended, ans.Code)
	assert.False(t, n.b.srv.Policy().Active(remote), "the ended session's commands are closed on node B")
}

// A delivery that names its session or tenant by something that is not
// an id is refused by the holder, which keeps and opens nothing for it:
// kept, such a session id would fail each drift check's query from then
// on, and the check would repair nothing.
func TestCluster_DeliveryNamingNoIDsIsRefused(t *testing.T) {
	n := newRoutedPair(t, nil, nil)
	n.a.consentAndArm(t)
	remote, _, _ := n.b.runAgent(t, "cam-gw-malformed")
	n.heldBy(t, remote, "node-b")
	var tenantID string
	ctx := context.Background()
	require.NoError(t, n.a.srv.Database().Pool.QueryRow(ctx, "SELECT tenant_id::text FROM agents WHERE id = $1", remote).Scan(&tenantID))
	const session = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
	now := time.Now()
	for _, d := range []cluster.Delivery{
		{Kind: cluster.DeliverActivation, SessionID: "not-a-session", TenantID: tenantID},
		{Kind: cluster.DeliverActivation, SessionID: strings.ToUpper(session), TenantID: tenantID},
		{Kind: cluster.DeliverActivation, SessionID: session, TenantID: "acme"},
		{Kind: cluster.DeliverCommand, SessionID: session, CommandID: "1"},
	} {
		d.AgentID, d.Operator, d.Reason, d.Name = remote, "alice", "INC-13", "ping"
		d.CreatedAt, d.ExpiresAt, d.Deadline = now, now.Add(30*time.Minute), now.Add(3*time.Second)
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ans, err := n.a.srv.Wire().Deliver(rctx, "node-b", d)
		cancel()
		require.NoError(t, err)
		assert.Equal(t, cluster.Malformed, ans.Code, "%s %q %q %q", d.Kind, d.SessionID, d.TenantID, d.CommandID)
		assert.False(t, n.b.srv.Policy().Active(remote), "nothing opened for %s %q", d.Kind, d.SessionID)
	}
}
