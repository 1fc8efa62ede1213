package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// readyCode is a node's /readyz: its status and, when refused, its code.
func readyCode(t *testing.T, nd *testenv.Node) (int, string) {
	t.Helper()
	resp, err := http.Get(nd.APIURL() + "/readyz")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body.Error.Code
}

// clusterKeyCLI runs `argus-server signing-key verb` on the cluster's
// database with its shared key directory, as an operator on a node does.
func clusterKeyCLI(t *testing.T, c *testenv.Cluster, args ...string) string {
	t.Helper()
	out, stderr, err := testenv.Run(t, c.Env().Vars("ARGUS_COMMAND_SIGNING_KEY="+c.KeyFile), "argus-server", append([]string{"signing-key"}, args...)...)
	require.NoError(t, err, stderr)
	return strings.TrimSpace(out)
}

// Key rotation on three nodes, an agent held by each. Nodes 1 and 2
// share the key directory the rotation writes to; node 3 has its own (a
// node on another machine). Rotated: every agent, whichever node holds
// it, accepts the new key chain; node 3 signs with the old key, which
// they still accept. Retired before the new file reaches node 3: node 3
// signs nothing, fails /readyz (signing_key_missing), sends its agent
// away (0x9C) and refuses it until it can sign, and what is asked of it
// directly is refused signing_key_missing. The file copied to node 3: it
// is ready again, takes its agent back (which then has the retirement), and
// every node opens a session and runs a command on an agent another node
// holds, each agent trusting the new key alone.
func TestSigningKeyCluster_RotateOnEveryNodeAndANodeWithoutTheNewKey(t *testing.T) {
	e := newClusterEnv(t, 3, testenv.ClusterOptions{Name: "keys"})
	c := e.c
	n1, n2, n3 := c.Node(1), c.Node(2), c.Node(3)
	own := filepath.Join(testenv.TempDir(t), "node-3-keys")
	require.NoError(t, os.MkdirAll(own, 0o700))
	pem, err := os.ReadFile(c.KeyFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(own, "command-signing.key"), pem, 0o600))
	n3.Restart(t, "ARGUS_COMMAND_SIGNING_KEY="+filepath.Join(own, "command-signing.key"))
	c.LB.AwaitStatus(t, n3.ID, "UP", 15*time.Second)
	agents := []*clusterAgent{e.agent(t, "edge-1", n1), e.agent(t, "edge-2", n2), e.agent(t, "edge-3", n3)}
	ctx := context.Background()
	accepted := func(a *clusterAgent, newest, oldest string) bool {
		var n int
		require.NoError(t, e.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'signing_key.accept'
			AND payload->>'agent_id' = $1 AND payload->'detail'->>'newest_key_id' = $2 AND payload->'detail'->>'oldest_key_id' = $3`,
			a.id, newest, oldest).Scan(&n))
		return n == 1
	}

	var st struct {
		Keys []struct {
			ID string `json:"key_id"`
		} `json:"keys"`
	}
	require.NoError(t, json.Unmarshal([]byte(clusterKeyCLI(t, c, "status", "--json")), &st))
	require.Len(t, st.Keys, 1)
	oldID := st.Keys[0].ID
	newID := clusterKeyCLI(t, c, "rotate")
	require.Regexp(t, "^[0-9a-f]{32}$", newID)
	for _, a := range agents {
		testenv.Eventually(t, 15*time.Second, func() bool { return accepted(a, newID, oldID) }, a.id+" accepted the new key chain")
		live, _ := agentKeys(t, a.dir)
		assert.ElementsMatch(t, []string{oldID, newID}, live)
	}
	for _, nd := range []*testenv.Node{n1, n2} {
		testenv.Eventually(t, 10*time.Second, func() bool {
			return strings.Contains(nd.Logs(), `"signing_with":"`+newID+`"`)
		}, nd.ID+" signs with the new key")
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(n3.Logs(), "signing with an older key")
	}, "node 3 says it signs with the old key")
	assert.NotContains(t, n3.Logs(), `"signing_with":"`+newID+`"`)
	status, _ := readyCode(t, n3)
	assert.Equal(t, http.StatusOK, status, "behind on a key agents accept: still ready")

	// Node 3 behind still works: its signatures are the old key's.
	sess, token := e.activate(t, n3, agents[0].id)
	testenv.Eventually(t, 10*time.Second, func() bool { return active(agents[0].dir) }, "edge-1 active through node 3")
	res, err := e.command(n3, sess.ID, token, "ping")
	require.NoError(t, err)
	assert.Equal(t, topics.ResultOK, res.Status, "a command node 3 signed with the old key")
	require.NoError(t, e.api(n1.APIURL()).Do(ctx, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))

	// Retired before node 3 has the new file: node 3 signs nothing agents
	// accept, so it sends its agent away (edge-3 knows only node 3's
	// address: it is refused there until the file is copied in).
	edge3Mark := agents[2].proc.LineCount()
	assert.Equal(t, oldID, clusterKeyCLI(t, c, "retire"))
	retiredOn := func(a *clusterAgent) {
		t.Helper()
		testenv.Eventually(t, 15*time.Second, func() bool { return accepted(a, newID, newID) }, a.id+" accepted the retirement")
		live, retired := agentKeys(t, a.dir)
		assert.Equal(t, []string{newID}, live)
		assert.Equal(t, []string{oldID}, retired)
	}
	retiredOn(agents[0])
	retiredOn(agents[1])
	agents[2].proc.WaitLog(t, edge3Mark, "to another server", 1, 15*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return e.holder(agents[2].id) == "" }, "node 3 holds no agent")
	assert.Contains(t, n3.Logs(), `"why":"no live signing key"`)
	testenv.Eventually(t, 10*time.Second, func() bool {
		status, code := readyCode(t, n3)
		return status == http.StatusServiceUnavailable && code == "signing_key_missing"
	}, "node 3 is not ready, and says why")
	assert.Contains(t, n3.Logs(), "signing key missing: this node signs nothing and is not ready")
	assert.Contains(t, n3.Logs(), "command-signing-"+newID+".key", "the log names the file to copy")
	for _, nd := range []*testenv.Node{n1, n2} {
		status, _ := readyCode(t, nd)
		assert.Equal(t, http.StatusOK, status, nd.ID)
	}
	err = e.api(n3.APIURL()).Do(ctx, "POST", "/v1/support/sessions",
		map[string]string{"tenant": clusterTenant, "agent": agents[1].id, "reason": "INC-1"}, nil)
	require.Error(t, err, "an activation asked of node 3 directly")
	assert.True(t, apiclient.IsCode(err, "signing_key_missing"), "%v", err)

	// The file copied to node 3: ready again without a restart.
	pem, err = os.ReadFile(filepath.Join(filepath.Dir(c.KeyFile), "command-signing-"+newID+".key"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(own, "command-signing-"+newID+".key"), pem, 0o600))
	testenv.Eventually(t, 10*time.Second, func() bool { status, _ := readyCode(t, n3); return status == http.StatusOK }, "node 3 ready again")
	assert.Contains(t, n3.Logs(), "signing key found: this node signs again")
	testenv.Eventually(t, 15*time.Second, func() bool { return e.holder(agents[2].id) == n3.ID }, "edge-3 back on node 3")
	retiredOn(agents[2])

	// Every node signs with the new key: each opens a session (the
	// holder signs the activation) and runs a command (the caller signs
	// it) on an agent another node holds; the agents trust nothing else.
	for i, nd := range c.Nodes {
		a := agents[(i+1)%len(agents)]
		sess, token := e.activate(t, nd, a.id)
		testenv.Eventually(t, 10*time.Second, func() bool { return active(a.dir) }, a.id+" active through "+nd.ID)
		res, err := e.command(nd, sess.ID, token, "ping")
		require.NoError(t, err)
		assert.Equal(t, topics.ResultOK, res.Status, "%s signs a command %s accepts", nd.ID, e.holder(a.id))
	}
}
