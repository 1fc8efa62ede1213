package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
)

// presenceOf is the agent's presence row: node and epoch ("" when none).
func (c *twoNodes) presenceOf(t *testing.T, agentID string) (string, int64) {
	t.Helper()
	var node string
	var epoch int64
	err := c.pool.QueryRow(context.Background(), "SELECT node_id, epoch FROM agent_presence WHERE agent_id = $1", agentID).Scan(&node, &epoch)
	if err != nil {
		return "", 0
	}
	return node, epoch
}

// The presence row of an agent connected to node A is lost behind A's
// back (deleted in PostgreSQL, as another node clearing A while A's lease
// was late would): A's next presence check records it again, under the
// connection's own epoch, and a command through node B reaches the agent
// on A.
func TestPresence_LostRowOfAConnectedAgentIsReasserted(t *testing.T) {
	c := newTwoNodes(t)
	agentID, _ := c.runAgent(t, "cam-gw-4", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	other := c.other(holder)
	sess, token := c.activate(t, other, agentID)
	_, before := c.presenceOf(t, agentID)

	tag, err := c.pool.Exec(context.Background(), "DELETE FROM agent_presence WHERE agent_id = $1", agentID)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())
	lost := time.Now()
	// Two checks at most: one may have read the record just before the
	// row went.
	testenv.Eventually(t, 15*time.Second, func() bool { node, _ := c.presenceOf(t, agentID); return node == holder.id }, "the holder re-asserts the agent's presence")
	t.Logf("presence back %s after it was lost", time.Since(lost).Round(time.Millisecond))
	_, after := c.presenceOf(t, agentID)
	assert.Equal(t, before, after, "re-asserted under the connection's own epoch")
	assert.Contains(t, holder.proc.Logs(), "had no current presence row; re-asserted")

	res, err := c.ping(other, sess.ID, token)
	require.NoError(t, err, "a command routed from the other node reaches the agent")
	assert.Equal(t, "ok", res.Status)
}

// A row names node A for an agent not connected anywhere (its
// disconnect's delete was lost): A's presence check deletes it, and
// leaves the row of the agent connected there alone.
func TestPresence_StrayRowOfAnAgentGoneIsCleared(t *testing.T) {
	c := newTwoNodes(t)
	agentID, _ := c.runAgent(t, "cam-gw-6", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	node, epoch := c.presenceOf(t, agentID)
	_, gone := c.enroll(t, "cam-gw-gone")
	_, err := c.pool.Exec(context.Background(), `INSERT INTO agent_presence (agent_id, node_id, connected_at, remote_addr, epoch)
		VALUES ($1, $2, now(), '127.0.0.1:1', 7)`, gone.AgentID, holder.id)
	require.NoError(t, err)

	testenv.Eventually(t, 15*time.Second, func() bool { n, _ := c.presenceOf(t, gone.AgentID); return n == "" }, "the holder clears the stray row")
	assert.Contains(t, holder.proc.Logs(), "cleared rows that named this node for agents not connected here")
	n, e := c.presenceOf(t, agentID)
	assert.Equal(t, [2]any{node, epoch}, [2]any{n, e}, "the connected agent's row is untouched")
}

// The row of an agent connected to node A names a live node C with a
// newer epoch (the agent connected to C, and A has not seen its old
// connection end): A's presence check closes its stale connection; the
// agent connects again, its move from C is audited, and commands reach
// it through node B.
func TestPresence_StaleConnectionUnderANewerRowElsewhereIsClosed(t *testing.T) {
	c := newTwoNodes(t)
	agentID, proc := c.runAgent(t, "cam-gw-5", "")
	holder := c.holder(t, agentID)
	require.NotNil(t, holder)
	other := c.other(holder)
	sess, token := c.activate(t, other, agentID)

	mark := proc.LineCount()
	ctx := context.Background()
	// C is alive (its lease holds), so no node clears its rows.
	_, err := c.pool.Exec(ctx, "INSERT INTO nodes (id, lease_expires_at) VALUES ('node-c', now() + interval '1 hour')")
	require.NoError(t, err)
	_, err = c.pool.Exec(ctx, `
		WITH e AS (UPDATE agents SET presence_epoch = presence_epoch + 1 WHERE id = $1 RETURNING presence_epoch)
		UPDATE agent_presence SET node_id = 'node-c', epoch = (SELECT presence_epoch FROM e) WHERE agent_id = $1`, agentID)
	require.NoError(t, err)
	testenv.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(holder.proc.Logs(), "connection here is stale")
	}, "the holder closes the connection the record says is stale")
	proc.WaitLog(t, mark, "connected to broker", 1, 15*time.Second)
	testenv.Eventually(t, 15*time.Second, func() bool { return c.holder(t, agentID) != nil }, "the agent's new connection recorded")
	now := c.holder(t, agentID)

	res, err := c.ping(other, sess.ID, token)
	require.NoError(t, err, "the next command reaches the agent where it is now")
	assert.Equal(t, "ok", res.Status)
	assert.Equal(t, [][2]string{{"node-c", now.id}}, c.moves(t, sess.ID), "the move from where the record said it was, audited")
}

// The agent's old connection on node B (not yet seen to end) and its new
// one on node A both lose the row: whichever re-asserts first, the record
// ends naming A's connection under its own epoch, B's stale connection is
// closed, and A's is never touched.
func TestPresence_LostRowGoesBackToTheNewerOfTwoConnections(t *testing.T) {
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	s := newSupportEnv(t, statusNodeSettings("node-a", a1, a2))
	nodeA := s.srv
	nodeB := statusNode(t, s.env, "node-b", a2, a1)
	pool := nodeA.Database().Pool
	e := s.enrollDirect(t, "gw-two")
	presence := func() (string, int64) {
		var node string
		var epoch int64
		if err := pool.QueryRow(context.Background(), "SELECT node_id, epoch FROM agent_presence WHERE agent_id = $1", e.AgentID).Scan(&node, &epoch); err != nil {
			return "", 0
		}
		return node, epoch
	}
	dial := func(url string) {
		c, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: e.AgentID, Username: e.AgentID, Password: e.Secret})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	}
	dial(nodeB.MQTTURL())
	testenv.Eventually(t, 5*time.Second, func() bool { n, _ := presence(); return n == "node-b" }, "old connection recorded on B")
	dial(nodeA.MQTTURL())
	testenv.Eventually(t, 5*time.Second, func() bool { n, _ := presence(); return n == "node-a" }, "new connection recorded on A")
	_, epochA := presence()
	require.True(t, nodeB.Broker().Connected(e.AgentID), "B has not seen its old connection end")

	_, err := pool.Exec(context.Background(), "DELETE FROM agent_presence WHERE agent_id = $1", e.AgentID)
	require.NoError(t, err)
	testenv.Eventually(t, 20*time.Second, func() bool { return !nodeB.Broker().Connected(e.AgentID) }, "B closes its stale connection")
	testenv.Eventually(t, 15*time.Second, func() bool { n, ep := presence(); return n == "node-a" && ep == epochA }, "the record names A's connection, under its own epoch")
	assert.True(t, nodeA.Broker().Connected(e.AgentID), "A's connection, the newer, was left alone")
}
