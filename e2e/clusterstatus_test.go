package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
	"github.com/argus-remote/argus/topics"
)

const statusClusterSecret = "status-cluster-secret-0123456789abcdef"

// statusNodeSettings are one node's settings in a cluster of in-process
// nodes.
func statusNodeSettings(id, listen string, peers ...string) map[string]any {
	return map[string]any{
		"remote-support-enabled":        true,
		"remote-support-operator-cidrs": "127.0.0.1/32",
		"ops-token":                     opsToken,
		"node-id":                       id,
		"cluster-name":                  "statustest",
		"cluster-secret":                statusClusterSecret,
		"cluster-listen":                listen,
		"cluster-peers":                 strings.Join(peers, ","),
		"cluster-lease":                 "4s",
	}
}

// statusNode starts one in-process node of a cluster on env's database
// (all nodes share its data dir, and so its signing key), routed to peers.
func statusNode(t *testing.T, env *testenv.Env, id, listen string, peers ...string) *server.Server {
	t.Helper()
	return testenv.StartInProcess(t, env, statusNodeSettings(id, listen, peers...))
}

// watcher is an MQTT client subscribed to filter that keeps the last
// message of every topic it has been sent.
type watcher struct {
	t    *testing.T
	c    *mqtttest.Client
	last map[string][]byte
	// since holds every message of each topic since the last mark.
	since map[string][][]byte
}

// mark forgets the messages seen so far (since).
func (w *watcher) mark() { w.since = map[string][][]byte{} }

func watch(t *testing.T, url, clientID, user, password, filter string) *watcher {
	t.Helper()
	c, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: clientID, Username: user, Password: password})
	require.NoError(t, err)
	sa, err := c.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	require.NoError(t, err)
	require.Less(t, sa.Reasons[0], byte(0x80), "subscribe %s", filter)
	return &watcher{t: t, c: c, last: map[string][]byte{}, since: map[string][][]byte{}}
}

// await waits until the last message on topic satisfies ok.
func (w *watcher) await(topic string, ok func([]byte) bool, what string) []byte {
	w.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if b, seen := w.last[topic]; seen && ok(b) {
			return b
		}
		select {
		case pk := <-w.c.Received:
			w.last[pk.Topic] = pk.Payload
			w.since[pk.Topic] = append(w.since[pk.Topic], pk.Payload)
		case <-deadline:
			w.t.Fatalf("%s: not seen on %s (last: %s)", what, topic, w.last[topic])
		}
	}
}

func agentOnline(online bool) func([]byte) bool {
	return func(b []byte) bool {
		var st topics.AgentStatusMsg
		return json.Unmarshal(b, &st) == nil && st.Online == online
	}
}

func tenantActive(active bool, session string) func([]byte) bool {
	return func(b []byte) bool {
		var st struct {
			Active   bool `json:"active"`
			Sessions []struct {
				SessionID string `json:"session_id"`
			} `json:"sessions"`
		}
		if json.Unmarshal(b, &st) != nil || st.Active != active {
			return false
		}
		return !active || len(st.Sessions) == 1 && st.Sessions[0].SessionID == session
	}
}

// An agent on node A; a monitor and the tenant's viewer on node B see its
// status and the tenant's indicator and command feed, as a session opens
// on A and ends on B; a node that joins late holds the same; the server
// summary lists every node; `argusctl cluster status` through any node
// lists every node with the agents it holds, for monitor or
// operator:admin only, and every refusal is audited with its code.
func TestClusterStatus_WatchersOnAnyNodeSeeEveryAgentAndTenant(t *testing.T) {
	env := testenv.NewEnv(t)
	a1, a2, a3 := testenv.FreeAddr(t), testenv.FreeAddr(t), testenv.FreeAddr(t)
	nodeA := statusNode(t, env, "node-a", a1, a2)
	nodeB := statusNode(t, env, "node-b", a2, a1)
	ctx := context.Background()
	pool := nodeA.Database().Pool
	ops := operators.NewStore(pool)
	_, admin, err := ops.Create(ctx, "alice", operators.NewToken{Scopes: []operators.Scope{
		operators.ScopeRemoteSupport, operators.ScopeTenantArm, operators.ScopeTenantAdmin, operators.ScopeAgentAdmin, operators.ScopeOperatorAdmin,
	}})
	require.NoError(t, err)
	_, monitor, err := ops.Create(ctx, "grafana", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	_, auditor, err := ops.Create(ctx, "auditor", operators.NewToken{Scopes: []operators.Scope{operators.ScopeAuditRead}})
	require.NoError(t, err)
	onA := &apiclient.Client{BaseURL: nodeA.APIURL(), Token: admin, OpsToken: opsToken}
	onB := &apiclient.Client{BaseURL: nodeB.APIURL(), Token: admin, OpsToken: opsToken}

	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane Roe"}, nil))
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-1"}, nil))
	var viewer struct {
		Token    string `json:"token"`
		TenantID string `json:"tenant_id"`
	}
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{}, &viewer))
	indicator := "argus/v1/status/tenants/" + viewer.TenantID + "/remote-support"
	feed := "argus/v1/status/tenants/" + viewer.TenantID + "/commands"

	// Two agents enroll through node A and connect to A's broker.
	runAgent := func(name string) (string, *testenv.AgentProcess) {
		var tok agents.EnrollmentToken
		require.NoError(t, onA.Do(ctx, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": "acme", "name": name}, &tok))
		dir := filepath.Join(t.TempDir(), name)
		_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", nodeA.APIURL(), "--token", tok.Token, "--state-dir", dir)
		require.NoError(t, err, stderr)
		st, err := agent.LoadState(dir)
		require.NoError(t, err)
		proc := testenv.StartAgent(t, dir)
		proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
		testenv.Eventually(t, 5*time.Second, func() bool { return nodeA.Broker().Connected(st.AgentID) }, "agent on node A")
		return st.AgentID, proc
	}
	agentID, proc := runAgent("cam-gw-1")
	otherID, _ := runAgent("cam-gw-2")
	agentTopic := "argus/v1/status/agents/" + agentID

	mon := watch(t, nodeB.MQTTURL(), "monitor-b", "monitor", monitor, topics.StatusFilter)
	view := watch(t, nodeB.MQTTURL(), "viewer-"+viewer.TenantID+"-b", "viewer:"+viewer.TenantID, viewer.Token, "argus/v1/status/tenants/"+viewer.TenantID+"/#")
	mon.await(agentTopic, agentOnline(true), "node B's monitor: the agent on node A is online")
	view.await(indicator, tenantActive(false, ""), "node B's viewer: nothing active")

	// A session opens through the agent's node; node B's viewer sees it.
	type opened struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	var act, other opened
	require.NoError(t, onA.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1: stream drops"}, &act))
	view.await(indicator, tenantActive(true, act.Session.ID), "node B's viewer: the session is active")
	mon.await(indicator, tenantActive(true, act.Session.ID), "node B's monitor: the session is active")

	// A second session of the tenant opens on A and ends through node B,
	// which opened neither: the indicator it publishes still shows the
	// first, live one.
	require.NoError(t, onA.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": otherID, "reason": "INC-2"}, &other))
	view.await(indicator, func(b []byte) bool {
		var st struct {
			Sessions []json.RawMessage `json:"sessions"`
		}
		return json.Unmarshal(b, &st) == nil && len(st.Sessions) == 2
	}, "node B's viewer: two sessions active")
	view.mark()
	require.NoError(t, onB.Do(ctx, "POST", "/v1/support/sessions/"+other.Session.ID+"/deactivate", nil, nil))
	view.await(indicator, tenantActive(true, act.Session.ID), "node B's viewer: the first session is still active")
	// Never, meanwhile, did it say that nothing was active.
	for _, b := range view.since[indicator] {
		assert.False(t, tenantActive(false, "")(b), "node B's viewer was told nothing is active while a session is: %s", b)
	}

	// A command's completion reaches node B's viewer in the feed.
	cmd := *onA
	cmd.SessionToken = act.Token
	var res apiclient.CommandResult
	require.NoError(t, cmd.Do(ctx, "POST", "/v1/support/sessions/"+act.Session.ID+"/commands", map[string]string{"name": "ping"}, &res))
	answered := time.Now()
	view.await(feed, func(b []byte) bool {
		var f topics.FeedMsg
		return json.Unmarshal(b, &f) == nil && len(f.Entries) == 1 && f.Entries[0].Command == "ping" && f.Entries[0].SessionID == act.Session.ID
	}, "node B's viewer: the ping in the feed")
	t.Logf("node B's viewer had the ping in its feed %v after node A answered it", time.Since(answered).Round(time.Microsecond))

	// The session ends through node B, which holds no part of it: both
	// nodes' indicators say so.
	require.NoError(t, onB.Do(ctx, "POST", "/v1/support/sessions/"+act.Session.ID+"/deactivate", nil, nil))
	view.await(indicator, tenantActive(false, ""), "node B's viewer: the session ended")
	viewA := watch(t, nodeA.MQTTURL(), "viewer-"+viewer.TenantID+"-a", "viewer:"+viewer.TenantID, viewer.Token, "argus/v1/status/tenants/"+viewer.TenantID+"/#")
	viewA.await(indicator, tenantActive(false, ""), "node A's viewer: the session ended")

	// A node that joins now holds the current state: the agent's status
	// (published on A, before C existed) and the tenant's feed.
	nodeC := statusNode(t, env, "node-c", a3, a1, a2)
	monC := watch(t, nodeC.MQTTURL(), "monitor-c", "monitor", monitor, topics.StatusFilter)
	monC.await(agentTopic, agentOnline(true), "late node C's monitor: the agent on node A is online")
	monC.await(indicator, tenantActive(false, ""), "late node C's monitor: nothing active")
	monC.await(feed, func(b []byte) bool {
		var f topics.FeedMsg
		return json.Unmarshal(b, &f) == nil && len(f.Entries) == 1 && f.Entries[0].SessionID == act.Session.ID
	}, "late node C's monitor: the feed")
	viewA.await(indicator, tenantActive(false, ""), "node A's viewer: still nothing active after C joined")
	// Its summary covers the cluster: every node, and who holds the agent.
	monC.await(topics.ServerStatus, func(b []byte) bool {
		var s server.ServerStatus
		if json.Unmarshal(b, &s) != nil || s.NodeID != "node-c" || s.ClusterAgents != 2 {
			return false
		}
		held := map[string]int{}
		for _, n := range s.Nodes {
			held[n.ID] = n.AgentsHeld
		}
		return len(held) == 3 && held["node-a"] == 2 && held["node-b"] == 0 && held["node-c"] == 0
	}, "late node C's summary: three nodes, the agents on A")

	// argusctl cluster status, through node B, for a monitor and an admin,
	// and through node C, once C's routes to A and to B are both up (C has
	// only just joined, and NATS forms each route on its own).
	onC := &apiclient.Client{BaseURL: nodeC.APIURL(), Token: admin, OpsToken: opsToken}
	for _, on := range []*apiclient.Client{onB, onC} {
		testenv.Eventually(t, 10*time.Second, func() bool {
			var cs struct {
				Nodes []struct {
					Reachable *bool `json:"reachable"`
				} `json:"nodes"`
			}
			if on.Do(ctx, "GET", "/v1/cluster", nil, &cs) != nil || len(cs.Nodes) != 3 {
				return false
			}
			for _, n := range cs.Nodes {
				if n.Reachable == nil || !*n.Reachable {
					return false
				}
			}
			return true
		}, "every node reachable from "+on.BaseURL)
	}
	for _, token := range []string{monitor, admin} {
		var cs struct {
			Node  string `json:"node"`
			Nodes []struct {
				ID         string  `json:"id"`
				Alive      bool    `json:"alive"`
				Fenced     bool    `json:"fenced"`
				AgentsHeld int     `json:"agents_held"`
				LeaseAge   float64 `json:"lease_age_seconds"`
				Version    string  `json:"version"`
				Reachable  *bool   `json:"reachable"`
				ThisNode   bool    `json:"this_node"`
			} `json:"nodes"`
		}
		testenv.CLIJSON(t, nodeB.APIURL(), token, &cs, "cluster", "status")
		assert.Equal(t, "node-b", cs.Node)
		require.Len(t, cs.Nodes, 3)
		for i, id := range []string{"node-a", "node-b", "node-c"} {
			n := cs.Nodes[i]
			assert.Equal(t, id, n.ID)
			assert.True(t, n.Alive, id)
			assert.False(t, n.Fenced, id)
			assert.Less(t, n.LeaseAge, 4.0, id)
			assert.NotEmpty(t, n.Version, id)
			if assert.NotNil(t, n.Reachable, id) {
				assert.True(t, *n.Reachable, "%s reachable from node B", id)
			}
			assert.Equal(t, id == "node-b", n.ThisNode, id)
			assert.Equal(t, map[bool]int{true: 2, false: 0}[id == "node-a"], n.AgentsHeld, id)
		}
	}
	out, stderr, err := testenv.CLI(t, nodeC.APIURL(), monitor, "cluster", "status")
	require.NoError(t, err, stderr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, out)
	assert.Regexp(t, `^NODE\s+STATE\s+LEASE AGE\s+VERSION\s+AGENTS\s+FENCED\s+REACHABLE`, lines[0])
	assert.Regexp(t, `^node-a\s+alive\s+\S+s\s+\S+\s+2\s+no\s+yes`, lines[1])
	assert.Regexp(t, `^node-c \*\s+alive`, lines[3])

	// Refusals: the code is stable, and each is audited.
	for _, tc := range []struct {
		name, bearer string
		status       int
		code, actor  string
	}{
		{"no token", "", http.StatusUnauthorized, "unauthenticated", "anonymous"},
		{"unknown token", "argus_pat_aaaaaaaaaaaaaaaa_" + strings.Repeat("0", 64), http.StatusUnauthorized, "invalid_token", "anonymous"},
		{"no monitor or operator:admin scope", auditor, http.StatusForbidden, "forbidden", "operator:auditor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", nodeB.APIURL()+"/v1/cluster", nil)
			require.NoError(t, err)
			if tc.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			var body struct {
				Error struct {
					Code string `json:"code"`
				} `json:"error"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Equal(t, tc.code, body.Error.Code)
			var n int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'cluster.status' AND outcome = 'denied'
				AND actor = $1 AND detail->>'code' = $2 AND detail->>'node' = 'node-b'`, tc.actor, tc.code).Scan(&n))
			assert.Equal(t, 1, n, "one audited refusal")
		})
	}
	out, stderr, err = testenv.CLI(t, nodeB.APIURL(), auditor, "cluster", "status")
	require.Error(t, err)
	assert.Contains(t, stderr+out, "forbidden")

	// The agent leaves node A: every node's watchers see it offline.
	proc.Stop()
	mon.await(agentTopic, agentOnline(false), "node B's monitor: the agent is offline")
	monC.await(agentTopic, agentOnline(false), "node C's monitor: the agent is offline")
}

// A single server is a cluster of one: `argusctl cluster status` shows
// its one row.
func TestClusterStatus_SingleNodeIsOneRow(t *testing.T) {
	s := newSupportEnv(t, map[string]any{"node-id": "solo"})
	var cs struct {
		Node  string `json:"node"`
		Nodes []struct {
			ID        string `json:"id"`
			Alive     bool   `json:"alive"`
			Reachable *bool  `json:"reachable"`
			ThisNode  bool   `json:"this_node"`
		} `json:"nodes"`
	}
	testenv.CLIJSON(t, s.srv.APIURL(), s.api.Token, &cs, "cluster", "status")
	assert.Equal(t, "solo", cs.Node)
	require.Len(t, cs.Nodes, 1)
	assert.Equal(t, "solo", cs.Nodes[0].ID)
	assert.True(t, cs.Nodes[0].Alive)
	assert.True(t, cs.Nodes[0].ThisNode)
	require.NotNil(t, cs.Nodes[0].Reachable)
	assert.True(t, *cs.Nodes[0].Reachable)
}

// A tenant token revoked through one node ends its viewers' connections
// on another even when the broadcast that says so is lost: the other
// node's check of its viewers' tokens finds the revocation.
func TestClusterStatus_ViewerRevokedElsewhereIsDroppedWithoutTheBroadcast(t *testing.T) {
	env := testenv.NewEnv(t)
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	// Node A loses every broadcast it sends (the switch is read as it starts).
	t.Setenv("ARGUS_TEST_DROP_BROADCASTS", "1")
	nodeA := statusNode(t, env, "node-a", a1, a2)
	require.NoError(t, os.Unsetenv("ARGUS_TEST_DROP_BROADCASTS"))
	nodeB := statusNode(t, env, "node-b", a2, a1)
	ctx := context.Background()
	_, admin, err := operators.NewStore(nodeA.Database().Pool).Create(ctx, "alice", operators.NewToken{Scopes: []operators.Scope{operators.ScopeTenantAdmin}})
	require.NoError(t, err)
	onA := &apiclient.Client{BaseURL: nodeA.APIURL(), Token: admin}
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	var viewer struct {
		ID       string `json:"id"`
		Token    string `json:"token"`
		TenantID string `json:"tenant_id"`
	}
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{}, &viewer))
	view := watch(t, nodeB.MQTTURL(), "viewer-"+viewer.TenantID+"-b", "viewer:"+viewer.TenantID, viewer.Token, "argus/v1/status/tenants/"+viewer.TenantID+"/#")
	view.await("argus/v1/status/tenants/"+viewer.TenantID+"/remote-support", tenantActive(false, ""), "the viewer on B is served")

	id := viewer.ID
	if id == "" {
		var list struct {
			Tokens []struct {
				ID string `json:"id"`
			} `json:"viewer_tokens"`
		}
		require.NoError(t, onA.Do(ctx, "GET", "/v1/tenants/acme/viewer-tokens", nil, &list))
		require.Len(t, list.Tokens, 1)
		id = list.Tokens[0].ID
	}
	revoked := time.Now()
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/viewer-tokens/"+id+"/revoke", nil, nil))
	select {
	case <-view.c.Done():
		t.Logf("viewer on node B dropped %v after the revocation on node A", time.Since(revoked).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("the viewer revoked on node A is still connected to node B")
	}
	_, _, err = mqtttest.Dial(t, nodeB.MQTTURL(), mqtttest.Options{ClientID: "viewer-" + viewer.TenantID + "-b2", Username: "viewer:" + viewer.TenantID, Password: viewer.Token})
	assert.Error(t, err, "nor can it connect again")
}

// An agent on node A that has gone silent is shown stale in its tenant's
// indicator even when node B, which does not hold it, publishes the
// indicator (ending another session of the tenant).
func TestClusterStatus_StaleAgentElsewhereStaysStaleInTheIndicator(t *testing.T) {
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	s := newSupportEnv(t, statusNodeSettings("node-a", a1, a2))
	nodeB := statusNode(t, s.env, "node-b", a2, a1)
	s.consentAndArm(t)
	var viewer struct {
		Token    string `json:"token"`
		TenantID string `json:"tenant_id"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{}, &viewer))
	indicator := "argus/v1/status/tenants/" + viewer.TenantID + "/remote-support"
	view := watch(t, nodeB.MQTTURL(), "viewer-"+viewer.TenantID+"-b", "viewer:"+viewer.TenantID, viewer.Token, "argus/v1/status/tenants/"+viewer.TenantID+"/#")

	silent, first := s.activeFake(t, "gw-silent")
	_, second := s.activeFake(t, "gw-other")
	// One heartbeat saying it beats every second, then silence.
	silent.publish(t, topics.Heartbeat, topics.HeartbeatMsg{V: topics.Version, AgentID: silent.e.AgentID, State: topics.StateActive,
		SessionID: first.session.ID, Interval: 1, Time: time.Now().UTC()})
	staleIn := func(b []byte) (bool, bool) {
		var st struct {
			Sessions []struct {
				SessionID  string `json:"session_id"`
				AgentStale bool   `json:"agent_stale"`
			} `json:"sessions"`
		}
		if json.Unmarshal(b, &st) != nil {
			return false, false
		}
		for _, x := range st.Sessions {
			if x.SessionID == first.session.ID {
				return x.AgentStale, true
			}
		}
		return false, false
	}
	view.await(indicator, func(b []byte) bool { stale, listed := staleIn(b); return listed && stale }, "node B's viewer: the silent agent is stale")

	view.mark()
	onB := *s.api
	onB.BaseURL = nodeB.APIURL()
	require.NoError(t, onB.Do(context.Background(), "POST", "/v1/support/sessions/"+second.session.ID+"/deactivate", nil, nil))
	view.await(indicator, tenantActive(true, first.session.ID), "node B's viewer: only the silent agent's session is left")
	for _, b := range view.since[indicator] {
		stale, listed := staleIn(b)
		assert.True(t, !listed || stale, "node B's viewer was told the silent agent is fine: %s", b)
	}
}

// An agent that moves from node A to node B stays online for every
// watcher when A notices its old connection's end only afterwards.
func TestClusterStatus_MovedAgentStaysOnlineWhenItsOldNodeSaysItLeftLate(t *testing.T) {
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	s := newSupportEnv(t, statusNodeSettings("node-a", a1, a2))
	nodeA := s.srv
	nodeB := statusNode(t, s.env, "node-b", a2, a1)
	_, monitor, err := operators.NewStore(nodeA.Database().Pool).Create(context.Background(), "grafana", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	e := s.enrollDirect(t, "gw-move")
	topic := "argus/v1/status/agents/" + e.AgentID
	monA := watch(t, nodeA.MQTTURL(), "monitor-a", "monitor", monitor, topics.StatusFilter)
	monB := watch(t, nodeB.MQTTURL(), "monitor-b", "monitor", monitor, topics.StatusFilter)

	onA, _, err := mqtttest.Dial(t, nodeA.MQTTURL(), mqtttest.Options{ClientID: e.AgentID, Username: e.AgentID, Password: e.Secret})
	require.NoError(t, err)
	monB.await(topic, agentOnline(true), "online on A, seen from B")
	// The agent is on B now; A has not noticed yet.
	monA.mark()
	onB, _, err := mqtttest.Dial(t, nodeB.MQTTURL(), mqtttest.Options{ClientID: e.AgentID, Username: e.AgentID, Password: e.Secret})
	require.NoError(t, err)
	t.Cleanup(func() { _ = onB.Disconnect(&paho.Disconnect{}) })
	testenv.Eventually(t, 5*time.Second, func() bool { return nodeB.Broker().Connected(e.AgentID) }, "on B")
	testenv.Eventually(t, 5*time.Second, func() bool {
		var n int
		err := nodeA.Database().Pool.QueryRow(context.Background(),
			"SELECT count(*) FROM agent_presence WHERE agent_id = $1 AND node_id = 'node-b'", e.AgentID).Scan(&n)
		return err == nil && n == 1
	}, "B's connection recorded")
	monA.await(topic, func([]byte) bool { return len(monA.since[topic]) > 0 }, "A's monitor hears B's word")
	monA.mark()
	monB.mark()

	// A notices now.
	require.NoError(t, onA.Disconnect(&paho.Disconnect{}))
	testenv.Eventually(t, 5*time.Second, func() bool { return !nodeA.Broker().Connected(e.AgentID) }, "gone from A")
	// A's word that it left (published as A saw the end) has had a
	// round trip to B's API and back to pass; the watchers still say online.
	var cs struct {
		Nodes []struct {
			ID string `json:"id"`
		} `json:"nodes"`
	}
	testenv.CLIJSON(t, nodeB.APIURL(), monitor, &cs, "cluster", "status")
	deadline := time.After(time.Second)
	for open := true; open; {
		select {
		case pk := <-monB.c.Received:
			monB.last[pk.Topic] = pk.Payload
			monB.since[pk.Topic] = append(monB.since[pk.Topic], pk.Payload)
		case pk := <-monA.c.Received:
			monA.last[pk.Topic] = pk.Payload
			monA.since[pk.Topic] = append(monA.since[pk.Topic], pk.Payload)
		case <-deadline:
			open = false
		}
	}
	for name, w := range map[string]*watcher{"A": monA, "B": monB} {
		for _, b := range w.since[topic] {
			assert.True(t, agentOnline(true)(b), "node %s's monitor was told the agent that moved to B is offline: %s", name, b)
		}
		if b, ok := w.last[topic]; assert.True(t, ok, name) {
			assert.True(t, agentOnline(true)(b), "node %s: last word online", name)
		}
	}
}

// The tenant's status page served by node 2 turns ACTIVE for a session
// whose agent is on node 1 and back to idle when it ends through node 3.
func TestClusterStatus_PageOnAnotherNodeTurnsActiveAndBackInChromium(t *testing.T) {
	a1, a2, a3 := testenv.FreeAddr(t), testenv.FreeAddr(t), testenv.FreeAddr(t)
	s := newSupportEnv(t, statusNodeSettings("node-1", a1, a2, a3))
	node2 := statusNode(t, s.env, "node-2", a2, a1, a3)
	node3 := statusNode(t, s.env, "node-3", a3, a1, a2)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	var viewer struct {
		Token string `json:"token"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{"description": "browser test"}, &viewer))

	ctx := browser(t)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(node2.APIURL()+"/status/#token="+viewer.Token)))
	waitState(t, ctx, "idle", 15*time.Second)

	sess, _ := s.activate(t, agentID, "")
	took := waitState(t, ctx, "ACTIVE", 5*time.Second)
	t.Logf("node 2's page turned ACTIVE %v after node 1 answered the activation", took.Round(time.Millisecond))
	live, err := chromedp.Run(ctx, chromedp.Text("#live tbody"))
	require.NoError(t, err)
	assert.Contains(t, live, "cam-gw-1")

	on3 := *s.api
	on3.BaseURL = node3.APIURL()
	require.NoError(t, on3.Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	waitState(t, ctx, "idle", 5*time.Second)
	today, err := chromedp.Run(ctx, chromedp.Text("#today tbody"))
	require.NoError(t, err)
	assert.Contains(t, today, "deactivated", "today's history lists the session ended through node 3")
}
