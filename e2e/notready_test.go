package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
)

// A command routed to a node whose agent is connected but has not taken
// up its commands (it has just arrived there, and subscribes once it has
// the re-published activation) is not sent into a topic nobody reads: the
// broker would drop it unseen and the operator would wait out the whole
// command timeout. After the reconnect wait it completes agent_not_ready,
// recorded as not delivered.
func TestCluster_CommandForAnAgentNotSubscribedIsNotSent(t *testing.T) {
	c := newTwoNodes(t)
	dir, st := c.enroll(t, "cam-1")
	proc := testenv.StartAgent(t, dir, "ARGUS_AGENT_BROKER_URLS="+c.nodes[0].proc.MQTTURL)
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return c.holder(t, st.AgentID) == c.nodes[0] }, "agent recorded on node a")
	sess, token := c.activate(t, c.nodes[0], st.AgentID)
	_, err := c.ping(c.nodes[1], sess.ID, token)
	require.NoError(t, err)

	// The agent's place is taken by a client with its credentials that
	// never subscribes to the commands.
	proc.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return c.holder(t, st.AgentID) == nil }, "agent gone")
	raw, _, err := mqtttest.Dial(t, c.nodes[0].proc.MQTTURL, mqtttest.Options{ClientID: st.AgentID, Username: st.AgentID, Password: st.Secret})
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Disconnect(&paho.Disconnect{}) })
	testenv.Eventually(t, 10*time.Second, func() bool { return c.holder(t, st.AgentID) == c.nodes[0] }, "client recorded on node a")

	t0 := time.Now()
	_, err = c.ping(c.nodes[1], sess.ID, token)
	took := time.Since(t0)
	require.Error(t, err)
	assert.Equal(t, "agent_not_ready", apiCode(err))
	assert.Less(t, took, 20*time.Second, "answered after the reconnect wait, not the command timeout")

	var status, code string
	require.NoError(t, c.pool.QueryRow(context.Background(), `SELECT status, coalesce(error_code, '') FROM commands
		WHERE session_id = $1 ORDER BY requested_at DESC LIMIT 1`, sess.ID).Scan(&status, &code))
	assert.Equal(t, "failed", status)
	assert.Equal(t, "agent_not_ready", code)
	assert.True(t, c.session(t, c.nodes[1], sess.ID).Active, "the session goes on")
}
