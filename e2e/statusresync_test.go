package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
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

// The commands a node runs just before it stops gracefully still reach
// every other node's tenant feed: the feed is published at most once a
// feed interval, and a node with no agents of its own to drain and no
// load balancer to wait for stops well within one (here in 4-7 ms). The
// agent is on node B, the operator calls node A, and A stops right after
// its last command answers.
func TestClusterStatus_FeedOfTheLastCommandsBeforeAStopReachesTheOthers(t *testing.T) {
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	s := newSupportEnv(t, statusNodeSettings("node-b", a2, a1))
	settingsA := statusNodeSettings("node-a", a1, a2)
	settingsA["cluster-drain-delay"] = "0s" // no load balancer to wait for
	nodeA := testenv.StartInProcess(t, s.env, settingsA)
	s.consentAndArm(t)
	var tenant apiclient.Tenant
	require.NoError(t, s.do(t, "GET", "/v1/tenants/acme", nil, &tenant))
	feed := "argus/v1/status/tenants/" + tenant.ID + "/commands"
	agentID, _, _ := s.runAgent(t, "gw-feed")
	require.True(t, s.srv.Broker().Connected(agentID), "the agent is on node B")
	monB := watch(t, s.srv.MQTTURL(), "monitor-b", "monitor", s.api.Token, topics.StatusFilter)

	onA := *s.api
	onA.BaseURL = nodeA.APIURL()
	var act struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	ctx := context.Background()
	require.NoError(t, onA.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1"}, &act))
	onA.SessionToken = act.Token
	const pings = 5
	var last apiclient.CommandResult
	for range pings {
		require.NoError(t, onA.Do(ctx, "POST", "/v1/support/sessions/"+act.Session.ID+"/commands", map[string]string{"name": "ping"}, &last))
	}
	require.NoError(t, nodeA.Close(ctx))

	monB.await(feed, func(b []byte) bool {
		var f topics.FeedMsg
		return json.Unmarshal(b, &f) == nil && len(f.Entries) == pings && f.Entries[0].CommandID == last.CommandID
	}, "node B's feed holds every ping node A ran, the last first")
}
