package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// Three real nodes: monitors on nodes 2 and 3 see an agent pinned to
// node 1; `argusctl cluster status` names node 1 as its holder. Node 1 is
// killed with kill -9 and can say nothing: the others' monitors see the
// agent offline once node 1's lease is out, and cluster status shows
// node 1 dead.
func TestClusterStatus_RealNodesSayAKilledNodesAgentsAreOffline(t *testing.T) {
	e := newClusterEnv(t, 3, testenv.ClusterOptions{})
	c := e.c
	monitor := c.Operator(t, "grafana", "monitor")
	n1, n2, n3 := c.Node(1), c.Node(2), c.Node(3)
	pinned := e.agent(t, "pinned-1", n1)
	testenv.Eventually(t, 10*time.Second, func() bool { return e.holder(pinned.id) == n1.ID }, "pinned agent on node 1")
	topic := "argus/v1/status/agents/" + pinned.id
	mon2 := watch(t, n2.BrokerURL(), "monitor-2", "monitor", monitor, topics.StatusFilter)
	mon3 := watch(t, n3.BrokerURL(), "monitor-3", "monitor", monitor, topics.StatusFilter)
	mon2.await(topic, agentOnline(true), "node 2's monitor: the agent on node 1 is online")
	mon3.await(topic, agentOnline(true), "node 3's monitor: the agent on node 1 is online")

	type row struct {
		ID         string `json:"id"`
		Alive      bool   `json:"alive"`
		AgentsHeld int    `json:"agents_held"`
		Reachable  *bool  `json:"reachable"`
	}
	status := func(via string) map[string]row {
		var cs struct {
			Nodes []row `json:"nodes"`
		}
		testenv.CLIJSON(t, via, monitor, &cs, "cluster", "status")
		out := map[string]row{}
		for _, r := range cs.Nodes {
			out[r.ID] = r
		}
		return out
	}
	rows := status(n2.APIURL())
	require.Len(t, rows, 3)
	assert.Equal(t, 1, rows[n1.ID].AgentsHeld, "node 1 holds the agent")
	for _, nd := range c.Nodes {
		assert.True(t, rows[nd.ID].Alive, nd.ID)
	}
	out, stderr, err := testenv.CLI(t, c.LB.APIURL, monitor, "cluster", "status")
	require.NoError(t, err, stderr)
	assert.Len(t, strings.Split(strings.TrimSpace(out), "\n"), 4, "a header and three nodes, through HAProxy:\n%s", out)

	killed := time.Now()
	n1.Kill(t)
	mon2.await(topic, agentOnline(false), "node 2's monitor: the killed node's agent is offline")
	t.Logf("node 2's monitor saw the agent of the killed node offline %v after the kill (lease 5s)", time.Since(killed).Round(time.Millisecond))
	mon3.await(topic, agentOnline(false), "node 3's monitor: the killed node's agent is offline")
	rows = status(n3.APIURL())
	assert.False(t, rows[n1.ID].Alive, "node 1 dead")
	if assert.NotNil(t, rows[n1.ID].Reachable) {
		assert.False(t, *rows[n1.ID].Reachable, "node 1 unreachable")
	}
	assert.True(t, rows[n2.ID].Alive)
}
