package e2e

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/patch"
)

// A node draining with a command in flight that never finishes gives up
// on it after cluster-drain-timeout, not the 30 s default: it sends the
// agent away, the other node takes it, the command is recorded as
// interrupted, and the node exits.
func TestCluster_DrainTimeoutIsHonoured(t *testing.T) {
	// The health check holds the patch until its file is removed: never.
	hp := newHeldPatch(t, "10m")
	config, key, started, hold := hp.config, hp.key, hp.started, hp.hold
	require.NoError(t, os.WriteFile(hold, nil, 0o644))

	c := newTwoNodes(t, "ARGUS_CLUSTER_DRAIN_TIMEOUT=1s", "ARGUS_CLUSTER_DRAIN_HANDOVER_TIMEOUT=20s")
	agentID, proc := c.runAgent(t, "cam-gw-3", config)
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	survivor := c.other(holder)
	sess, token := c.activate(t, holder, agentID)

	bundle, err := patch.Build(patch.Manifest{ID: "HF-STUCK", Version: "1.1.0", Root: "streamer", Files: []patch.File{{Target: "bin/run.sh", Mode: "0755"}}},
		map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v2\n")}, key)
	require.NoError(t, err)
	done := make(chan patchAnswer, 1)
	go func() {
		cl := *holder.api
		cl.SessionToken = token
		var res struct {
			Status string `json:"status"`
			Code   string `json:"error_code"`
		}
		err := cl.DoRaw(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/patch", "application/octet-stream", bundle, &res)
		done <- patchAnswer{res.Status, res.Code, err}
	}()
	testenv.Eventually(t, 15*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "the patch's health check runs")

	mark := proc.LineCount()
	sigterm := time.Now()
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGTERM))
	// With the default bound the node would still be waiting for the
	// patch 30 s from now; with 1 s it has sent the agent away and left.
	select {
	case <-holder.proc.Done():
	case <-time.After(25 * time.Second):
		t.Fatalf("the draining node did not give up on its command in flight within 25 s of SIGTERM\n%s", holder.proc.Logs())
	}
	t.Logf("drained node exited %s after SIGTERM", time.Since(sigterm).Round(time.Millisecond))
	logs := holder.proc.Logs()
	assert.Contains(t, logs, "draining: commands still in flight after the bound", "the bound was reached, not the command's end")
	assert.Contains(t, logs, `"bound":1000000000`, "the bound is the configured 1 s")
	proc.WaitLog(t, mark, "broker asked this agent to use another server", 1, 10*time.Second)

	select {
	case res := <-done:
		t.Logf("patch answered: %+v", res)
	case <-time.After(10 * time.Second):
		t.Fatal("the patch request was not answered once its node left")
	}
	var status, code string
	require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT status, coalesce(error_code, '') FROM commands WHERE session_id = $1 AND name = 'apply_patch'`, sess.ID).Scan(&status, &code))
	t.Logf("command recorded: %s %s", status, code)
	assert.NotEqual(t, "succeeded", status)
	testenv.Eventually(t, 15*time.Second, func() bool { return c.holder(t, agentID) == survivor }, "the other node took the agent")
}

type patchAnswer struct {
	status, code string
	err          error
}

// A draining node sends the agents in a live session away first, before
// the paced rest: a command for one waits for it to move only as long as
// command-reconnect-wait, and a drain of thousands of agents takes longer.
// Here 100 idle agents are sent away at 10 a second behind the session's.
func TestCluster_DrainSendsSessionAgentsFirst(t *testing.T) {
	c := newTwoNodes(t, "ARGUS_CLUSTER_DRAIN_EVICT_RATE=10", "ARGUS_ENROLL_RATE_LIMIT=1000")
	agentID, proc := c.runAgent(t, "cam-gw-1", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	sess, token := c.activate(t, holder, agentID)

	const idle = 100
	var bare []*mqtttest.Client
	ctx := context.Background()
	for i := range idle {
		var tok struct {
			Token string `json:"token"`
		}
		require.NoError(t, c.nodes[0].api.Do(ctx, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": "acme", "name": fmt.Sprint("idle-", i)}, &tok))
		st, err := agent.Enroll(ctx, holder.proc.APIURL, tok.Token, t.TempDir(), nil)
		require.NoError(t, err)
		cl, _, err := mqtttest.Dial(t, holder.proc.MQTTURL, mqtttest.Options{ClientID: st.AgentID, Username: st.AgentID, Password: st.Secret})
		require.NoError(t, err, "idle agent %d", i)
		bare = append(bare, cl)
	}
	connected := func() int {
		n := 0
		for _, cl := range bare {
			select {
			case <-cl.Done():
			default:
				n++
			}
		}
		return n
	}
	require.Equal(t, idle, connected())

	mark := proc.LineCount()
	require.NoError(t, holder.proc.Cmd.Process.Signal(syscall.SIGTERM))
	proc.WaitLog(t, mark, "broker asked this agent to use another server", 1, 15*time.Second)
	assert.GreaterOrEqual(t, connected(), idle-5, "the session's agent went before (nearly) every idle one")
	res, err := c.ping(c.other(holder), sess.ID, token)
	require.NoError(t, err, "the session's command through the other node")
	assert.Equal(t, "ok", res.Status)
	assert.Greater(t, connected(), 0, "idle agents were still being sent away as the session's command ran")
}
