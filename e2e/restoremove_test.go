package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// auditChainLock is the advisory lock every audit write takes to extend
// the chain (controlplane/audit): holding it holds back every commit of
// an audit row.
const auditChainLock int64 = 0x6172677573617564

// A node that restored a live session at start and then sees its agent
// arrive from another node sends the agent nothing of that session until
// agent.moved is committed: while no audit row can commit (the test holds
// the chain's lock), the agent receives no activation; once it can, the
// activation follows the committed row.
func TestCluster_RestoredSessionsActivationFollowsAgentMovedCommit(t *testing.T) {
	env := testenv.NewEnv(t)
	a1, a2 := testenv.FreeAddr(t), testenv.FreeAddr(t)
	nodeA := statusNode(t, env, "node-a", a1, a2)
	ctx := context.Background()
	pool := nodeA.Database().Pool
	_, admin, err := operators.NewStore(pool).Create(ctx, "alice", operators.NewToken{Scopes: []operators.Scope{
		operators.ScopeRemoteSupport, operators.ScopeTenantArm, operators.ScopeTenantAdmin, operators.ScopeAgentAdmin,
	}})
	require.NoError(t, err)
	onA := &apiclient.Client{BaseURL: nodeA.APIURL(), Token: admin, OpsToken: opsToken}
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane Roe"}, nil))
	require.NoError(t, onA.Do(ctx, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-1"}, nil))

	var tok agents.EnrollmentToken
	require.NoError(t, onA.Do(ctx, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": "acme", "name": "cam-gw-1"}, &tok))
	dir := filepath.Join(t.TempDir(), "cam-gw-1")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", nodeA.APIURL(), "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	proc := testenv.StartAgent(t, dir)
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool {
		var n int
		return pool.QueryRow(ctx, "SELECT count(*) FROM agent_presence WHERE agent_id = $1 AND node_id = 'node-a'", st.AgentID).Scan(&n) == nil && n == 1
	}, "the agent's connection to node A recorded")
	var act struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, onA.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": st.AgentID, "reason": "INC-1: stream drops"}, &act))
	require.NotNil(t, act.Session.AckedAt)

	// Node B starts with the session live (restore), then the agent comes
	// to it from node A while no audit row can commit.
	nodeB := statusNode(t, env, "node-b", a2, a1)
	hold, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(ctx) //nolint:errcheck // released below; this is for a failed test
	_, err = hold.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", auditChainLock)
	require.NoError(t, err)

	id, err := topics.ParseAgentID(st.AgentID)
	require.NoError(t, err)
	activation := id.Topic(topics.Activation)
	c, _, err := mqtttest.Dial(t, nodeB.MQTTURL(), mqtttest.Options{ClientID: st.AgentID, Username: st.AgentID, Password: st.Secret})
	require.NoError(t, err)
	_, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: activation, QoS: 1}}})
	require.NoError(t, err)
	// Node B has reached an audit write for the arrival and waits on the
	// chain.
	testenv.Eventually(t, 15*time.Second, func() bool {
		var n int
		return pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'`).Scan(&n) == nil && n > 0
	}, "node B waits to commit an audit row")
	testenv.Eventually(t, 15*time.Second, func() bool {
		var p agents.Presence
		err := pool.QueryRow(ctx, "SELECT node_id, epoch FROM agent_presence WHERE agent_id = $1", st.AgentID).Scan(&p.NodeID, &p.Epoch)
		return err == nil && p.NodeID == "node-b"
	}, "the agent's connection to node B recorded")
	// A second subscribe's answer follows every retained message of the
	// first: what node B had for the agent has been sent by now.
	_, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: id.Topic(topics.Commands), QoS: 1}}})
	require.NoError(t, err)
	active := func(pk *paho.Publish) bool {
		var msg topics.ActivationMsg
		return pk.Topic == activation && topics.Unverified(pk.Payload, topics.MaxEnvelope, &msg) == nil &&
			msg.State == topics.StateActive && msg.SessionID == act.Session.ID
	}
	for len(c.Received) > 0 {
		pk := <-c.Received
		require.False(t, active(pk), "node B sent the session's activation before agent.moved could commit")
	}

	// The chain is free: agent.moved commits, then the activation comes.
	require.NoError(t, hold.Commit(ctx))
	deadline := time.After(15 * time.Second)
	for got := false; !got; {
		select {
		case pk := <-c.Received:
			got = active(pk)
		case <-deadline:
			t.Fatal("node B never sent the restored session's activation")
		}
	}
	var from, to string
	require.NoError(t, pool.QueryRow(ctx, `SELECT detail->>'from_node', detail->>'to_node' FROM audit_log
		WHERE action = 'agent.moved' AND session_id = $1`, act.Session.ID).Scan(&from, &to),
		"agent.moved is committed when the agent receives its activation")
	assert.Equal(t, [2]string{"node-a", "node-b"}, [2]string{from, to})
}
