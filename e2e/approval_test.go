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

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
)

// approvalState is an activation waiting for its tenant, as the API shows it.
type approvalState struct {
	ID          string     `json:"id"`
	State       string     `json:"state"`
	Operator    string     `json:"operator"`
	AgentName   string     `json:"agent_name"`
	Reason      string     `json:"reason"`
	TTL         string     `json:"ttl"`
	DecidedAt   *time.Time `json:"decided_at"`
	DecidedBy   string     `json:"decided_by"`
	Outcome     string     `json:"outcome"`
	RequestedAt time.Time  `json:"requested_at"`
}

// ctlEnv is the environment that makes the argusctl binary talk to s as
// alice, who holds every scope.
func (s *supportEnv) ctlEnv(t *testing.T) []string {
	return []string{"ARGUSCTL_SERVER=" + s.srv.APIURL(), "ARGUSCTL_TOKEN=" + s.api.Token, "ARGUSCTL_OPS_TOKEN=" + opsToken,
		"ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + filepath.Join(t.TempDir(), "cfg")}
}

type ctlResult struct {
	stdout, stderr string
	err            error
	took           time.Duration
}

// activateCLI runs `argusctl support activate` in the background.
func (s *supportEnv) activateCLI(t *testing.T, env []string, agentID, reason string) <-chan ctlResult {
	done := make(chan ctlResult, 1)
	go func() {
		start := time.Now()
		out, errOut, err := testenv.Run(t, env, "argusctl", "support", "activate", "--tenant", "acme", "--agent", agentID,
			"--reason", reason, "--ttl", "20m")
		done <- ctlResult{out, errOut, err, time.Since(start)}
	}()
	return done
}

// waitingRow waits for the page to list one waiting activation and
// returns its session id.
func waitingRow(t *testing.T, ctx context.Context) string {
	t.Helper()
	waitJS(t, ctx, `document.querySelectorAll("#approvals tbody tr").length === 1`, 10*time.Second)
	id, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#approvals tbody tr").dataset.session`))
	require.NoError(t, err)
	return id
}

func (s *supportEnv) approvalOf(t *testing.T, id string) approvalState {
	t.Helper()
	var a approvalState
	require.NoError(t, s.do(t, "GET", "/v1/support/sessions/"+id+"/approval", nil, &a))
	return a
}

func (s *supportEnv) actorOf(t *testing.T, action, sessionID string) string {
	t.Helper()
	var actor string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT actor FROM audit_log
		WHERE action = $1 AND session_id = $2 AND outcome = 'success'`, action, sessionID).Scan(&actor))
	return actor
}

func TestApproval_ApprovedDeniedAndTimedOutFromThePage(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, proc := s.runAgent(t, "cam-gw-1")
	approver := s.tenantToken(t, "acme", "view", "approve")
	env := s.ctlEnv(t)
	out, stderr, err := testenv.Run(t, env, "argusctl", "tenant", "approval", "set", "acme", "--mode", "required", "--timeout", "1m")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "approval: required")

	ctx := browser(t)
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1100, 800)))
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+approver.Token)))
	waitState(t, ctx, "idle", 15*time.Second)

	// 1. Approved from the page: the session opens, its TTL counted from
	// the approval.
	done := s.activateCLI(t, env, agentID, "INC-7: frames drop at dusk")
	id := waitingRow(t, ctx)
	row, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#approvals tbody tr[data-session="`+id+`"]`)))
	require.NoError(t, err)
	for _, want := range []string{"alice", "cam-gw-1", "INC-7: frames drop at dusk", "20m0s"} {
		assert.Contains(t, row, want, "the page says who asks, for which agent, why and for how long")
	}
	assert.Equal(t, "pending_approval", s.approvalOf(t, id).State)
	s.assertUnopened(t, id, "pending_approval")
	assert.False(t, s.srv.Policy().Active(agentID), "the commands topic stays shut while it waits")
	// argusctl waits, and says so with the time elapsed: the click comes
	// after it has asked at least once.
	testenv.Eventually(t, 10*time.Second, func() bool {
		var a struct {
			ElapsedMs int64 `json:"elapsed_ms"`
		}
		return s.do(t, "GET", "/v1/support/sessions/"+id+"/approval", nil, &a) == nil && a.ElapsedMs >= 2500
	}, "two seconds of waiting")
	require.Empty(t, done, "argusctl still waits")
	// Readable on a phone, the waiting request too.
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)))
	wide, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	require.NoError(t, err)
	assert.False(t, wide, "the page fits a phone's width")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1100, 800)))
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	out = filepath.Join(t.TempDir(), "tenant-page-approval.png")
	if os.Getenv("ARGUS_UPDATE_SCREENSHOT") == "1" {
		out = filepath.Join("..", "docs", "tenant-page-approval.png")
	}
	require.NoError(t, os.WriteFile(out, shot, 0o644))
	shown, stderr, err := testenv.Run(t, env, "argusctl", "support", "show", id)
	require.NoError(t, err, stderr)
	assert.Contains(t, shown, "pending_approval (waiting for the tenant since")
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#approvals tbody tr[data-session="`+id+`"] button.approve`))))
	waitJS(t, ctx, `document.getElementById("confirm-approval").open`, 2*time.Second)
	confirmText, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("confirm-approval-text")))
	require.NoError(t, err)
	assert.Contains(t, confirmText, "Let alice into cam-gw-1 for 20m0s?")
	assert.Equal(t, "pending_approval", s.approvalOf(t, id).State, "nothing is approved before the tenant confirms")
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("approval-approve"))))
	clicked := time.Now()
	var res ctlResult
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("argusctl did not return after the approval")
	}
	require.NoError(t, res.err, res.stderr)
	t.Logf("click to argusctl returning with the open session: %v", time.Since(clicked))
	assert.Contains(t, res.stderr, "waiting for acme to approve the session on cam-gw-1")
	assert.Contains(t, res.stderr, "elapsed")
	assert.Contains(t, res.stderr, "approved by tenant_token:"+approver.ID)
	assert.Contains(t, res.stdout, "session "+id+" active on agent cam-gw-1")
	sess := s.session(t, id)
	assert.True(t, sess.Active)
	require.NotNil(t, sess.AckedAt)
	a := s.approvalOf(t, id)
	require.NotNil(t, a.DecidedAt)
	assert.Equal(t, "opened", a.Outcome)
	assert.False(t, sess.CreatedAt.Before(a.DecidedAt.Add(-time.Millisecond)), "the session begins at the approval")
	assert.Equal(t, 20*time.Minute, sess.ExpiresAt.Sub(sess.CreatedAt), "its TTL counts from the approval")
	assert.True(t, s.srv.Policy().Active(agentID))
	// Each step audited, with the approver's token.
	assert.Equal(t, "operator:alice", s.actorOf(t, "support.approval.request", id))
	assert.Equal(t, "tenant_token:"+approver.ID, s.actorOf(t, "support.approval.approve", id))
	var approvedBy string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT detail->>'approved_by' FROM audit_log
		WHERE action = 'support.activate' AND session_id = $1 AND outcome = 'success'`, id).Scan(&approvedBy))
	assert.Equal(t, "tenant_token:"+approver.ID, approvedBy)
	for _, action := range []string{"support.approval.request", "support.approval.approve", "support.activate"} {
		na, ne := s.auditPair(t, action, id)
		assert.Equal(t, 1, na, action)
		assert.Equal(t, 1, ne, action)
	}
	_, err = s.command(t, id, strings.TrimSpace(readToken(t, env, id)), "ping")
	require.NoError(t, err, "the session opened by the approval takes commands")
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+id+"/deactivate", nil, nil))
	s.assertClosed(t, sess, dir, proc, "deactivated")
	// Its transcript holds the request and the approval, and verifies.
	tdir := t.TempDir()
	file, keyFile := filepath.Join(tdir, "t.json"), filepath.Join(tdir, "cp.pub")
	_, stderr, err = testenv.Run(t, env, "argusctl", "support", "transcript", id, "--out", file)
	require.NoError(t, err, stderr)
	_, stderr, err = testenv.Run(t, env, "argusctl", "audit", "signing-key", "--out", keyFile)
	require.NoError(t, err, stderr)
	verified, stderr, err := testenv.Run(t, env, "argusctl", "audit", "verify-transcript", file, "--key", keyFile)
	require.NoError(t, err, stderr)
	assert.Contains(t, verified, "verified")
	body, err := os.ReadFile(file)
	require.NoError(t, err)
	for _, action := range []string{"support.approval.request", "support.approval.approve", "support.activate", "support.session.end"} {
		assert.Contains(t, string(body), action, "the transcript has %s", action)
	}

	// 2. Denied from the page: tenant_denied, nothing opened.
	done = s.activateCLI(t, env, agentID, "INC-8: second look")
	id = waitingRow(t, ctx)
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#approvals tbody tr[data-session="`+id+`"] button.deny`))))
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("argusctl did not return after the denial")
	}
	require.Error(t, res.err)
	assert.Contains(t, res.stderr, "tenant_denied")
	assert.Equal(t, "denied", s.approvalOf(t, id).State)
	s.assertUnopened(t, id, "denied")
	assert.False(t, s.srv.Policy().Active(agentID))
	assert.Equal(t, "tenant_token:"+approver.ID, s.actorOf(t, "support.approval.deny", id))
	// The waiting node records the refusal once it reads the decision.
	testenv.Eventually(t, 5*time.Second, func() bool {
		na, ne := s.deniedWith(t, "support.activate", "tenant_denied")
		return na == 1 && ne == 1
	}, "the activation's refusal audited twice")
	waitJS(t, ctx, `document.querySelectorAll("#approvals tbody tr").length === 0`, 5*time.Second)

	// 3. No answer: tenant_approval_timeout once the (changed) timeout passes.
	_, stderr, err = testenv.Run(t, env, "argusctl", "tenant", "approval", "set", "acme", "--mode", "required", "--timeout", "5s")
	require.NoError(t, err, stderr)
	done = s.activateCLI(t, env, agentID, "INC-9: nobody home")
	id = waitingRow(t, ctx)
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("argusctl did not return after the timeout")
	}
	require.Error(t, res.err)
	assert.Contains(t, res.stderr, "tenant_approval_timeout")
	assert.GreaterOrEqual(t, res.took, 5*time.Second, "it waited the whole timeout")
	assert.Equal(t, "timeout", s.approvalOf(t, id).State)
	testenv.Eventually(t, 5*time.Second, func() bool {
		var n int
		return s.srv.Database().Pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
			WHERE action = 'support.approval.timeout' AND session_id = $1 AND actor = 'system'`, id).Scan(&n) == nil && n == 1
	}, "the timeout audited, by the system")
	testenv.Eventually(t, 5*time.Second, func() bool {
		na, ne := s.deniedWith(t, "support.activate", "tenant_approval_timeout")
		return na == 1 && ne == 1
	}, "the activation's refusal audited twice")
	assert.False(t, s.srv.Policy().Active(agentID))
	waitJS(t, ctx, `document.querySelectorAll("#approvals tbody tr").length === 0`, 5*time.Second)

	// Both settings are audited, each with what it replaced.
	rows, err := s.srv.Database().Pool.Query(context.Background(), `SELECT detail->>'previous_timeout', detail->>'timeout' FROM audit_log
		WHERE action = 'tenant.approval.set' AND outcome = 'success' ORDER BY occurred_at`)
	require.NoError(t, err)
	var changes []string
	for rows.Next() {
		var prev, now string
		require.NoError(t, rows.Scan(&prev, &now))
		changes = append(changes, prev+"->"+now)
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, []string{"10m0s->1m0s", "1m0s->5s"}, changes)
}

// assertUnopened checks that id has no session: the API shows the
// activation in state, inactive, and no session row exists.
func (s *supportEnv) assertUnopened(t *testing.T, id, state string) {
	t.Helper()
	sess := s.session(t, id)
	assert.Equal(t, state, sess.State)
	assert.False(t, sess.Active)
	var n int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), "SELECT count(*) FROM support_sessions WHERE id = $1", id).Scan(&n))
	assert.Zero(t, n, "no session row")
}

// readToken reads the session token argusctl kept.
func readToken(t *testing.T, env []string, id string) string {
	t.Helper()
	for _, kv := range env {
		if dir, ok := strings.CutPrefix(kv, "XDG_CONFIG_HOME="); ok {
			b, err := os.ReadFile(filepath.Join(dir, "argusctl", "sessions", id+".token"))
			require.NoError(t, err)
			return string(b)
		}
	}
	t.Fatal("no config dir")
	return ""
}

// An operator holding every scope cannot open a session on a tenant that
// requires approval: the request waits, and nothing in it skips the wait.
func TestApproval_NoOperatorScopeSkipsIt(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "required", "timeout": "1m"}, nil))

	var res struct {
		Session  apiclient.Session `json:"session"`
		Token    string            `json:"token"`
		Approval approvalState     `json:"approval"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1"}, &res))
	require.Equal(t, "pending_approval", res.Approval.State)
	id := res.Session.ID
	// The token handed out opens nothing before the approval.
	_, err := s.command(t, id, res.Token, "ping")
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Contains(t, []string{"session_not_found", "session_ended", "invalid_session_token", "forbidden"}, apiErr.Code, apiErr.Code)
	// A second activation, a body that says "approved", the tenant's
	// admin scope: none of them opens it.
	err = s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1 again"}, nil)
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "agent_busy", apiErr.Code)
	err = s.do(t, "POST", "/v1/support/sessions", map[string]any{"tenant": "acme", "agent": agentID, "reason": "INC-1", "approved": true}, nil)
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "bad_request", apiErr.Code)
	err = s.do(t, "POST", "/v1/viewer/sessions/"+id+"/approve", nil, nil)
	require.ErrorAs(t, err, &apiErr, "an operator token is no tenant token")
	assert.Equal(t, http.StatusUnauthorized, apiErr.Status)
	assert.Equal(t, "pending_approval", s.approvalOf(t, id).State)
	assert.False(t, s.srv.Policy().Active(agentID))

	// The operator may withdraw it.
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+id+"/deactivate", nil, nil))
	testenv.Eventually(t, 5*time.Second, func() bool { return s.approvalOf(t, id).Outcome == "approval_withdrawn" }, "withdrawn")
	assert.Equal(t, "operator:alice", s.actorOf(t, "support.approval.withdraw", id))
	assert.False(t, s.srv.Policy().Active(agentID))

	// Mode off: sessions open as before.
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "off"}, nil))
	sess, _ := s.activate(t, agentID, "")
	assert.True(t, sess.Active)
}

func TestApproval_ViewOnlyTokensAndOtherTenantsCannotDecide(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	view := s.tenantToken(t, "acme", "view", "end")
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "beta"}, nil))
	beta := s.tenantToken(t, "beta", "view", "end", "approve")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "required", "timeout": "1m"}, nil))
	var res struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1"}, &res))
	id := res.Session.ID

	// The view token's page shows the request and no Approve or Deny.
	ctx := browser(t)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+view.Token)))
	waitState(t, ctx, "idle", 15*time.Second)
	assert.Equal(t, id, waitingRow(t, ctx))
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#approvals button").length`))
	require.NoError(t, err)
	assert.Zero(t, n, "a token without approve sees no Approve or Deny")

	for _, verb := range []string{"approve", "deny"} {
		status, code := s.viewerCall(t, "POST", "/v1/viewer/sessions/"+id+"/"+verb, view.Token, nil)
		assert.Equal(t, http.StatusForbidden, status)
		assert.Equal(t, "forbidden", code)
		var actor string
		require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT actor FROM audit_log
			WHERE action = $1 AND outcome = 'denied' AND detail->>'code' = 'forbidden'`, "support.approval."+verb).Scan(&actor))
		assert.Equal(t, "tenant_token:"+view.ID, actor)
		// Tenant B's token, with every right: not found, as none.
		status, code = s.viewerCall(t, "POST", "/v1/viewer/sessions/"+id+"/"+verb, beta.Token, nil)
		assert.Equal(t, http.StatusNotFound, status)
		assert.Equal(t, "session_not_found", code)
		na, ne := s.deniedWith(t, "support.approval."+verb, "session_not_found")
		assert.Equal(t, 1, na)
		assert.Equal(t, 1, ne)
	}
	// Nor does B see A's request.
	req, _ := http.NewRequest("GET", s.srv.APIURL()+"/v1/viewer/approvals", nil)
	req.Header.Set("Authorization", "Bearer "+beta.Token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var list struct {
		Approvals []approvalState `json:"approvals"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
	resp.Body.Close()
	assert.Empty(t, list.Approvals)
	assert.Equal(t, "pending_approval", s.approvalOf(t, id).State, "nothing was decided by any of it")
}

func TestApproval_BadInputIsRefusedAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	approver := s.tenantToken(t, "acme", "view", "approve")
	revoked := s.tenantToken(t, "acme", "approve")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/tokens/"+revoked.ID+"/revoke", nil, nil))
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "beta"}, nil))
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "required", "timeout": "1m"}, nil))
	var res struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1"}, &res))
	id := res.Session.ID

	for _, verb := range []string{"approve", "deny"} {
		action := "support.approval." + verb
		path := "/v1/viewer/sessions/" + id + "/" + verb
		for _, c := range []struct {
			name, path, bearer string
			body               []byte
			status             int
			code               string
		}{
			{"no token", path, "", nil, 401, "unauthenticated"},
			{"not a token", path, "hello", nil, 401, "invalid_token"},
			{"an operator's token", path, s.api.Token, nil, 401, "invalid_token"},
			{"revoked token", path, revoked.Token, nil, 401, "token_revoked"},
			{"bad session id", "/v1/viewer/sessions/not-a-session/" + verb, approver.Token, nil, 404, "session_not_found"},
			{"over-long session id", "/v1/viewer/sessions/" + strings.Repeat("a", 3000) + "/" + verb, approver.Token, nil, 404, "session_not_found"},
			{"unknown session", "/v1/viewer/sessions/" + uuid.NewString() + "/" + verb, approver.Token, nil, 404, "session_not_found"},
			{"oversized body", path, approver.Token, []byte(`{"note":"` + strings.Repeat("x", 5000) + `"}`), 413, "payload_too_large"},
			{"not JSON", path, approver.Token, []byte(`{"note":`), 400, "bad_request"},
			{"unknown field", path, approver.Token, []byte(`{"approved":true}`), 400, "bad_request"},
			{"note too long", path, approver.Token, []byte(`{"note":"` + strings.Repeat("x", 1100) + `"}`), 400, "value_too_long"},
		} {
			t.Run(verb+"/"+c.name, func(t *testing.T) {
				a0, e0 := s.deniedWith(t, action, c.code)
				status, code := s.viewerCall(t, "POST", c.path, c.bearer, c.body)
				assert.Equal(t, c.status, status)
				assert.Equal(t, c.code, code)
				a1, e1 := s.deniedWith(t, action, c.code)
				assert.Equal(t, a0+1, a1, "the refusal is in audit_log")
				assert.Equal(t, e0+1, e1, "and in events")
			})
		}
	}
	assert.Equal(t, "pending_approval", s.approvalOf(t, id).State, "no refusal decided anything")

	// Decided once; the second decision is refused, audited.
	status, code := s.viewerCall(t, "POST", "/v1/viewer/sessions/"+id+"/deny", approver.Token, []byte(`{"note":"not today"}`))
	require.Equal(t, http.StatusOK, status, code)
	status, code = s.viewerCall(t, "POST", "/v1/viewer/sessions/"+id+"/approve", approver.Token, nil)
	assert.Equal(t, http.StatusConflict, status)
	assert.Equal(t, "approval_decided", code)
	na, ne := s.deniedWith(t, "support.approval.approve", "approval_decided")
	assert.Equal(t, 1, na)
	assert.Equal(t, 1, ne)

	// The setting: bounds checked before the database, every refusal audited.
	for _, c := range []struct {
		name, tenant string
		body         any
		code         string
	}{
		{"no mode", "acme", map[string]string{}, "invalid_approval_mode"},
		{"unknown mode", "acme", map[string]string{"mode": "sometimes"}, "invalid_approval_mode"},
		{"timeout too short", "acme", map[string]string{"mode": "required", "timeout": "1s"}, "invalid_approval_timeout"},
		{"zero timeout", "acme", map[string]string{"mode": "required", "timeout": "0s"}, "invalid_approval_timeout"},
		{"timeout too long", "acme", map[string]string{"mode": "required", "timeout": "2h"}, "invalid_approval_timeout"},
		{"not a duration", "acme", map[string]string{"mode": "required", "timeout": "soon"}, "invalid_approval_timeout"},
		{"unknown field", "acme", map[string]any{"mode": "off", "bypass": true}, "bad_request"},
		{"oversized body", "acme", map[string]string{"mode": "off", "timeout": strings.Repeat("9", 5000)}, "payload_too_large"},
		{"unknown tenant", "nobody", map[string]string{"mode": "off"}, "tenant_not_found"},
	} {
		t.Run("set/"+c.name, func(t *testing.T) {
			a0, e0 := s.deniedWith(t, "tenant.approval.set", c.code)
			err := s.do(t, "POST", "/v1/tenants/"+c.tenant+"/approval", c.body, nil)
			var apiErr *apiclient.Error
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, c.code, apiErr.Code)
			a1, e1 := s.deniedWith(t, "tenant.approval.set", c.code)
			assert.Equal(t, a0+1, a1, "the refusal is in audit_log")
			assert.Equal(t, e0+1, e1, "and in events")
		})
	}
	var set struct {
		Mode, Timeout string
	}
	require.NoError(t, s.do(t, "GET", "/v1/tenants/acme/approval", nil, &set))
	assert.Equal(t, "required", set.Mode, "no refusal changed the setting")
	assert.Equal(t, "1m0s", set.Timeout)
	// argusctl checks the bounds before it asks.
	_, stderr, err := testenv.Run(t, s.ctlEnv(t), "argusctl", "tenant", "approval", "set", "acme", "--mode", "required", "--timeout", "2h")
	require.Error(t, err)
	assert.Contains(t, stderr, "5s to 1h0m0s")
}

// The page's transcript link downloads the session's signed transcript,
// which verifies offline.
func TestTenantPage_TranscriptDownloads(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	sess, tok := s.activate(t, agentID, "")
	_, err := s.command(t, sess.ID, tok, "ping")
	require.NoError(t, err)
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	view := s.tenantToken(t, "acme", "view")

	downloads := t.TempDir()
	ctx := browser(t)
	require.NoError(t, chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
			Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads})
		return err
	})))
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+view.Token)))
	waitState(t, ctx, "idle", 15*time.Second)
	link := `#today tbody tr[data-session="` + sess.ID + `"] a.transcript`
	waitJS(t, ctx, `!!document.querySelector('`+link+`')`, 5*time.Second)
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(link))))
	file := filepath.Join(downloads, "transcript-"+sess.ID+".json")
	testenv.Eventually(t, 10*time.Second, func() bool {
		b, err := os.ReadFile(file)
		return err == nil && json.Valid(b)
	}, "the transcript is downloaded")
	var doc struct {
		Session struct {
			ID string `json:"id"`
		} `json:"session"`
	}
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &doc))
	assert.Equal(t, sess.ID, doc.Session.ID)

	env := s.ctlEnv(t)
	keyFile := filepath.Join(t.TempDir(), "control-plane.pub")
	_, stderr, err := testenv.Run(t, env, "argusctl", "audit", "signing-key", "--out", keyFile)
	require.NoError(t, err, stderr)
	out, stderr, err := testenv.Run(t, env, "argusctl", "audit", "verify-transcript", file, "--key", keyFile)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "verified")
	var actor string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT actor FROM audit_log
		WHERE action = 'transcript.download' AND outcome = 'success' AND detail->>'session' = $1`, sess.ID).Scan(&actor))
	assert.Equal(t, "viewer:"+view.ID, actor)
}

// A tenant disarmed while an activation waits leaves nothing to approve:
// the request ends, refused tenant_not_armed, and leaves the page.
func TestApproval_DisarmWhileWaitingEndsTheRequest(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	approver := s.tenantToken(t, "acme", "view", "approve")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "required", "timeout": "1m"}, nil))
	var res struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1"}, &res))
	id := res.Session.ID
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/disarm", map[string]string{"reason": "not now"}, nil))
	testenv.Eventually(t, 5*time.Second, func() bool { return s.approvalOf(t, id).Outcome == "tenant_not_armed" }, "the request ends")
	assert.Equal(t, "withdrawn", s.approvalOf(t, id).State)
	status, code := s.viewerCall(t, "POST", "/v1/viewer/sessions/"+id+"/approve", approver.Token, nil)
	assert.Equal(t, http.StatusConflict, status)
	assert.Equal(t, "approval_decided", code)
	s.assertUnopened(t, id, "withdrawn")
	assert.False(t, s.srv.Policy().Active(agentID))
}

// An agent revoked while its activation waits ends the request.
func TestApproval_RevokeWhileWaitingEndsTheRequest(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/approval", map[string]string{"mode": "required", "timeout": "1m"}, nil))
	var res struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-1"}, &res))
	id := res.Session.ID
	require.NoError(t, s.do(t, "POST", "/v1/agents/"+agentID+"/revoke", map[string]string{"reason": "host retired"}, nil))
	testenv.Eventually(t, 5*time.Second, func() bool { return s.approvalOf(t, id).Outcome == "agent_revoked" }, "the request ends")
	s.assertUnopened(t, id, "withdrawn")
}
