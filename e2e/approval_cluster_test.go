package e2e

import (
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
)

// The decision reaches another node than the one the activation waits
// on: the wait is read from the database, so the session opens anyway.
func TestApproval_DecidedThroughAnotherNode(t *testing.T) {
	routeA, routeB := testenv.FreeAddr(t), testenv.FreeAddr(t)
	secret := strings.Repeat("s", 40)
	cluster := func(listen, peer string) map[string]any {
		return map[string]any{"cluster-name": "approval", "cluster-secret": secret, "cluster-listen": listen, "cluster-peers": peer}
	}
	s := newSupportEnv(t, cluster(routeA, routeB))
	// Node B: the same database and signing key, its own data directory.
	envB := &testenv.Env{DataDir: testenv.TempDir(t), DatabaseURL: s.env.DatabaseURL}
	key, err := os.ReadFile(filepath.Join(s.env.DataDir, "command-signing.key"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(envB.DataDir, "command-signing.key"), key, 0o600))
	o := cluster(routeB, routeA)
	for k, v := range map[string]any{"remote-support-enabled": true, "remote-support-operator-cidrs": "127.0.0.1/32", "ops-token": opsToken} {
		o[k] = v
	}
	nodeB := testenv.StartInProcessWith(t, envB, o, nil)

	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1") // connected to node A
	approver := s.tenantToken(t, "acme", "view", "approve")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "required", "timeout": "1m"}, nil))
	var res struct {
		Session  apiclient.Session `json:"session"`
		Token    string            `json:"token"`
		Approval approvalState     `json:"approval"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1", "ttl": "15m"}, &res))
	require.Equal(t, "pending_approval", res.Approval.State)
	id := res.Session.ID

	// The tenant's page is served by node B (behind a balancer it may be).
	b := &supportEnv{inProcess: &inProcess{env: envB, srv: nodeB}}
	status, code := b.viewerCall(t, "GET", "/v1/viewer/approvals", approver.Token, nil)
	require.Equal(t, http.StatusOK, status, code)
	decided := time.Now()
	status, code = b.viewerCall(t, "POST", "/v1/viewer/sessions/"+id+"/approve", approver.Token, nil)
	require.Equal(t, http.StatusOK, status, code)
	testenv.Eventually(t, 15*time.Second, func() bool { return s.approvalOf(t, id).Outcome == "opened" }, "the session opens on node A")
	t.Logf("approval on node B to the session open on node A: %v", time.Since(decided))
	sess := s.session(t, id)
	assert.True(t, sess.Active)
	assert.Equal(t, 15*time.Minute, sess.ExpiresAt.Sub(sess.CreatedAt))
	_, err = s.command(t, id, res.Token, "ping")
	require.NoError(t, err)
	assert.Equal(t, "tenant_token:"+approver.ID, s.actorOf(t, "support.approval.approve", id))
}
