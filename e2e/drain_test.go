package e2e

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
