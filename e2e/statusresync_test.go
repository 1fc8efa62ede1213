package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
	"github.com/argus-remote/argus/topics"
)

// Node A loses every status message it sends as it publishes it (the
// test switch): an agent's end on A never reaches node B as it happens.
// B's monitor, which had the agent online from A's snapshot, sees it
// offline within one re-sync period.
func TestClusterStatus_StatusLostInFlightIsRepairedByTheResync(t *testing.T) {
	const resync = 2 * time.Second
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	settingsA := statusNodeSettings("node-a", a1, a2)
	settingsA["cluster-status-resync"] = resync.String()
	s := newSupportEnvWith(t, settingsA, func(c *server.Config) { c.Cluster.DropStatus = true })
	nodeA := s.srv
	_, monitor, err := operators.NewStore(nodeA.Database().Pool).Create(context.Background(), "grafana", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	e := s.enrollDirect(t, "gw-resync")
	topic := "argus/v1/status/agents/" + e.AgentID

	// Connected before B starts: B has it from A's snapshot, the one
	// way A's word reaches B without the re-sync.
	ag, _, err := mqtttest.Dial(t, nodeA.MQTTURL(), mqtttest.Options{ClientID: e.AgentID, Username: e.AgentID, Password: e.Secret})
	require.NoError(t, err)
	monA := watch(t, nodeA.MQTTURL(), "monitor-a", "monitor", monitor, topics.StatusFilter)
	monA.await(topic, agentOnline(true), "online on A")
	settingsB := statusNodeSettings("node-b", a2, a1)
	settingsB["cluster-status-resync"] = resync.String()
	nodeB := testenv.StartInProcess(t, s.env, settingsB)
	monB := watch(t, nodeB.MQTTURL(), "monitor-b", "monitor", monitor, topics.StatusFilter)
	monB.await(topic, agentOnline(true), "online, seen from B (A's snapshot)")

	require.NoError(t, ag.Disconnect(&paho.Disconnect{}))
	monA.await(topic, agentOnline(false), "offline on A")
	left := time.Now()
	monB.await(topic, agentOnline(false), "offline, seen from B, once A re-syncs")
	t.Logf("B saw the lost end %s after A published it (re-sync every %s)", time.Since(left).Round(time.Millisecond), resync)
}
