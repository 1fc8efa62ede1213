package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
)

// TestCluster_RollingRestartUnderCommandLoadFailsNothing restarts each of
// three real nodes in turn (SIGTERM: drain, then start again) while two
// loops send audited pings through HAProxy in a live session whose agent
// dials HAProxy too, so the agent moves at least once and the calls land
// on every node: no command fails, the session is never ended, and every
// command is on record in both trails, requested and completed.
func TestCluster_RollingRestartUnderCommandLoadFailsNothing(t *testing.T) {
	e := newClusterEnv(t, 3, testenv.ClusterOptions{})
	c := e.c
	a := e.agent(t, "rolling-load", nil)
	lb := e.api(c.LB.APIURL)
	ctx := context.Background()
	var res struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	require.NoError(t, lb.Do(ctx, "POST", "/v1/support/sessions",
		map[string]string{"tenant": clusterTenant, "agent": a.id, "reason": "INC-7: rolling upgrade", "ttl": "30m"}, &res))
	sess := *lb
	sess.SessionToken = res.Token

	var (
		mu       sync.Mutex
		answered []string
		failures []string
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var out apiclient.CommandResult
				err := sess.Do(ctx, "POST", "/v1/support/sessions/"+res.Session.ID+"/commands", map[string]string{"name": "ping"}, &out)
				mu.Lock()
				switch {
				case err != nil:
					failures = append(failures, time.Now().Format("15:04:05.000")+" "+err.Error())
				case out.Status != "ok":
					failures = append(failures, fmt.Sprintf("%s: %s", out.CommandID, out.Status))
				default:
					answered = append(answered, out.CommandID)
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	countAnswered := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(answered)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return countAnswered() >= 10 }, "commands answered before the restart")

	start := time.Now()
	moves := 0
	for _, nd := range c.Nodes {
		held := e.holder(a.id) == nd.ID
		t.Logf("%s: stopping %s (holds the agent: %v)", time.Now().Format("15:04:05.000"), nd.ID, held)
		nd.Stop(t)
		c.LB.AwaitStatus(t, nd.ID, "DOWN", 5*time.Second)
		if held {
			moves++
			testenv.Eventually(t, 15*time.Second, func() bool { h := e.holder(a.id); return h != "" && h != nd.ID }, "the agent moved off "+nd.ID)
		}
		nd.Start(t)
		c.LB.AwaitStatus(t, nd.ID, "UP", 20*time.Second)
		// Commands keep flowing between restarts: each node's turn is
		// tested under load, not in a lull.
		n := countAnswered()
		testenv.Eventually(t, 15*time.Second, func() bool { return countAnswered() >= n+10 }, "commands answered after "+nd.ID+" is back")
	}
	close(stop)
	wg.Wait()
	t.Logf("rolling restart of %d nodes under load: %v; %d commands answered, %d failed, the agent moved %d times",
		len(c.Nodes), time.Since(start).Round(time.Millisecond), len(answered), len(failures), moves)
	assert.Empty(t, failures, "no command failed during the rolling restart")
	assert.GreaterOrEqual(t, moves, 1, "the agent's node was restarted, so it moved")

	var s apiclient.Session
	require.NoError(t, lb.Do(ctx, "GET", "/v1/support/sessions/"+res.Session.ID, nil, &s))
	assert.True(t, s.Active, "the session was never ended (end reason %q)", s.EndReason)

	count := func(q string, args ...any) int {
		var n int
		require.NoError(t, e.pool.QueryRow(ctx, q, args...).Scan(&n))
		return n
	}
	for _, id := range answered {
		for _, action := range []string{"support.command.requested", "support.command.completed"} {
			assert.Equal(t, 1, count(`SELECT count(*) FROM audit_log a JOIN events e ON e.id = a.id
				WHERE a.action = $1 AND a.detail->>'command_id' = $2`, action, id), "command %s: %s in both trails", id, action)
		}
	}
	assert.Zero(t, count(`SELECT count(*) FROM commands WHERE session_id = $1 AND status <> 'succeeded'`, res.Session.ID),
		"every command of the session completed ok")
	moved := count(`SELECT count(*) FROM audit_log WHERE action = 'agent.moved' AND agent_id = $1`, a.id)
	assert.GreaterOrEqual(t, moved, 1, "the move is audited")
}
