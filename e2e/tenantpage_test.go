package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// tenantToken is a minted tenant token.
type tenantToken struct {
	ID       string   `json:"id"`
	TenantID string   `json:"tenant_id"`
	Token    string   `json:"token"`
	Rights   []string `json:"rights"`
}

func (s *supportEnv) tenantToken(t *testing.T, tenant string, rights ...string) tenantToken {
	t.Helper()
	var tok tenantToken
	require.NoError(t, s.do(t, "POST", "/v1/tenants/"+tenant+"/tokens", map[string]any{"rights": rights, "description": "test"}, &tok))
	require.True(t, strings.HasPrefix(tok.Token, "argus_vwr_"))
	return tok
}

// viewerCall sends a tenant-token request and returns its status and
// error code ("" on success).
func (s *supportEnv) viewerCall(t *testing.T, method, path, bearer string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.srv.APIURL()+path, bytes.NewReader(body))
	require.NoError(t, err)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error.Code
}

// deniedEnds counts the refused session ends audited (both tables) with
// this code.
func (s *supportEnv) deniedEnds(t *testing.T, code string) (int, int) {
	t.Helper()
	ctx := context.Background()
	pool := s.srv.Database().Pool
	var a, e int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.session.end' AND outcome = 'denied'
		AND detail->>'code' = $1`, code).Scan(&a))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'support.session.end'
		AND payload->>'outcome' = 'denied' AND payload->'detail'->>'code' = $1`, code).Scan(&e))
	return a, e
}

// recordContradictions makes the page remember, from its first script
// on, every moment its banner and its footer disagree: a banner still
// connecting while the footer says live, or a banner naming a state while
// the footer says the connection is gone.
func recordContradictions(ctx context.Context) error {
	return chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.__contradictions = [];
			new MutationObserver(function () {
				var st = document.getElementById("state"), conn = document.getElementById("conn");
				if (!st || !conn) { return; }
				var s = st.textContent, c = conn.textContent;
				if ((s === "connecting…" && c === "connected, live") ||
				    ((s === "idle" || s === "ACTIVE") && c.indexOf("disconnected") === 0)) {
					window.__contradictions.push(s + " / " + c);
				}
			}).observe(document, {subtree: true, childList: true, characterData: true});`})
		return err
	}))
}

// waitJS waits until expr is true in the page and returns how long that took.
func waitJS(t *testing.T, ctx context.Context, expr string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if _, err := chromedp.Run(cctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(10*time.Millisecond))); err != nil {
		t.Fatalf("the page never satisfied %s within %v: %v", expr, within, err)
	}
	return time.Since(start)
}

func TestTenantPage_LiveFeedAndEndFromThePage(t *testing.T) {
	h := newHostFixture(t)
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, proc := s.runConfiguredAgent(t, "cam-gw-1", h.config)
	tok := s.tenantToken(t, "acme", "view", "end")
	assert.Equal(t, []string{"view", "end"}, tok.Rights)

	ctx := browser(t)
	require.NoError(t, recordContradictions(ctx))
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+tok.Token)))
	waitState(t, ctx, "idle", 15*time.Second)

	sess, sessToken := s.activate(t, agentID, "")
	waitState(t, ctx, "ACTIVE", 5*time.Second)
	waitJS(t, ctx, `document.querySelectorAll("#live tbody tr[data-session='`+sess.ID+`'] button.end").length === 1`, 2*time.Second)

	config := filepath.Join(h.root, "config.yaml")
	for _, c := range []struct {
		name    string
		args    any
		summary string
	}{
		{"ping", map[string]any{}, "liveness check"},
		{"tail_log", map[string]any{"log": "streamer", "lines": 5}, "log streamer, 5 lines"},
		{"read_file", map[string]any{"path": config}, fmt.Sprintf("file %s, %d bytes", config, len(h.configBody))},
		{"camera_view", map[string]any{"camera": "test"}, "camera test, "},
	} {
		res := s.run(t, sess.ID, sessToken, c.name, c.args)
		require.Equal(t, "ok", res.Status, c.name)
		took := waitJS(t, ctx, `(function () { var r = document.querySelector("#feed tbody tr");
			return !!r && r.dataset.command === "`+res.CommandID+`"; })()`, 5*time.Second)
		assert.Less(t, took, time.Second, "%s is at the top of the feed within a second of completing", c.name)
		row, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#feed tbody tr[data-command="`+res.CommandID+`"]`)))
		require.NoError(t, err)
		assert.Contains(t, row, c.name)
		assert.Contains(t, row, "alice")
		assert.Contains(t, row, "succeeded")
		assert.Contains(t, row, "cam-gw-1")
		assert.Contains(t, row, c.summary)
	}
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	for _, content := range []string{"last line", "line 1000", "bitrate", "4000", "/9j/"} {
		assert.NotContains(t, body, content, "the page shows what was touched, never its content")
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#feed tbody tr").length`))
	require.NoError(t, err)
	assert.Equal(t, 4, rows)

	// Readable on a phone: nothing wider than the screen but the tables'
	// own scrolling boxes.
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)))
	wide, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	require.NoError(t, err)
	assert.False(t, wide, "the page fits a phone's width")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1100, 900)))
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "tenant-page.png")
	if os.Getenv("ARGUS_UPDATE_SCREENSHOT") == "1" {
		out = filepath.Join("..", "docs", "tenant-page.png")
		require.NoError(t, os.MkdirAll(filepath.Dir(out), 0o755))
	}
	require.NoError(t, os.WriteFile(out, shot, 0o644))
	t.Logf("screenshot: %s", out)

	// The tenant ends the session: a confirmation, then the end.
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#live tbody tr[data-session="`+sess.ID+`"] button.end`))))
	waitJS(t, ctx, `document.getElementById("confirm").open`, 2*time.Second)
	assert.True(t, s.srv.Policy().Active(agentID), "nothing ends before the tenant confirms")
	clicked := time.Now()
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.ID("confirm-end"))))
	testenv.Eventually(t, 5*time.Second, func() bool {
		st, err := agent.ReadStatus(dir)
		return err == nil && st.State == topics.StateDormant
	}, "agent dormant")
	dormant := time.Since(clicked)
	_, err = s.command(t, sess.ID, sessToken, "ping")
	refused := time.Since(clicked)
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "session_ended", apiErr.Code)
	assert.Less(t, dormant, time.Second, "the agent is dormant within a second of the click")
	assert.Less(t, refused, time.Second, "the next command is refused within a second of the click")
	t.Logf("click to agent dormant: %v; click to a refused command: %v", dormant, refused)
	s.assertClosed(t, sess, dir, proc, "tenant_ended")
	waitState(t, ctx, "idle", 5*time.Second)
	today, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#today tbody")))
	require.NoError(t, err)
	assert.Contains(t, today, "tenant_ended")

	// The end is audited, twice, with the tenant token as the actor.
	var actor, reason string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT actor, detail->>'end_reason' FROM audit_log
		WHERE action = 'support.session.end' AND session_id = $1 AND outcome = 'success'`, sess.ID).Scan(&actor, &reason))
	assert.Equal(t, "tenant_token:"+tok.ID, actor)
	assert.Equal(t, "tenant_ended", reason)
	a, e := s.auditPair(t, "support.session.end", sess.ID)
	assert.Equal(t, 1, a)
	assert.Equal(t, 1, e)
	var evActor string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT payload->>'actor' FROM events
		WHERE action = 'support.session.end' AND payload->>'session_id' = $1`, sess.ID).Scan(&evActor))
	assert.Equal(t, "tenant_token:"+tok.ID, evActor)

	contradictions, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__contradictions`))
	require.NoError(t, err)
	assert.Empty(t, contradictions, "the banner and the footer never disagreed")
}

// The banner says "connecting…" until the retained indicator has
// arrived, and the footer does not say "connected, live" before it.
func TestTenantPage_BannerNeverContradictsTheFooter(t *testing.T) {
	s := newSupportEnv(t, nil)
	tok := s.tenantToken(t, "acme")
	ctx := browser(t)
	require.NoError(t, recordContradictions(ctx))
	for i := 0; i < 3; i++ {
		require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+tok.Token)))
		waitState(t, ctx, "idle", 15*time.Second)
		waitJS(t, ctx, `document.getElementById("conn").textContent === "connected, live"`, 5*time.Second)
		contradictions, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__contradictions`))
		require.NoError(t, err)
		require.Empty(t, contradictions, "load %d: the banner and the footer disagreed", i)
	}
	// A view-only token: no End button, ever.
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("button.end").length`))
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestTenantTokens_ViewOnlyAndOtherTenantsAreRefused(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	view := s.tenantToken(t, "acme", "view")
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "beta"}, nil))
	beta := s.tenantToken(t, "beta", "view", "end", "approve")
	sess, sessToken := s.activate(t, agentID, "")

	// It tries anyway: forbidden, audited under its id.
	status, code := s.viewerCall(t, "POST", "/v1/viewer/sessions/"+sess.ID+"/end", view.Token, nil)
	assert.Equal(t, http.StatusForbidden, status)
	assert.Equal(t, "forbidden", code)
	var actor string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT actor FROM audit_log
		WHERE action = 'support.session.end' AND outcome = 'denied' AND detail->>'code' = 'forbidden'`).Scan(&actor))
	assert.Equal(t, "tenant_token:"+view.ID, actor)

	// Tenant B's token, with every right, cannot end A's session: it is
	// not found, as a session that does not exist.
	status, code = s.viewerCall(t, "POST", "/v1/viewer/sessions/"+sess.ID+"/end", beta.Token, nil)
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, "session_not_found", code)
	a, e := s.deniedEnds(t, "session_not_found")
	assert.Equal(t, 1, a)
	assert.Equal(t, 1, e)

	// Nor see it: the broker refuses B's viewer A's topics, and A's
	// username with B's token.
	url := s.srv.MQTTURL()
	_, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: "viewer-" + view.TenantID + "-x", Username: "viewer:" + view.TenantID, Password: beta.Token})
	assert.Error(t, err, "B's token does not open A")
	bv, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: "viewer-" + beta.TenantID + "-x", Username: "viewer:" + beta.TenantID, Password: beta.Token})
	require.NoError(t, err)
	a1, _ := topics.ParseTenantID(view.TenantID)
	for _, filter := range []string{a1.CommandFeed(), a1.RemoteSupport(), a1.TenantStatusFilter(), "argus/v1/status/tenants/+/commands"} {
		sa, _ := bv.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		require.NotNil(t, sa, filter)
		assert.GreaterOrEqual(t, sa.Reasons[0], byte(0x80), "B's viewer may not subscribe to %s", filter)
	}

	// No tenant token reaches the command path, whatever its rights.
	for _, tt := range []string{view.Token, beta.Token} {
		req, _ := http.NewRequest("POST", s.srv.APIURL()+"/v1/support/sessions/"+sess.ID+"/commands", strings.NewReader(`{"name":"ping"}`))
		req.Header.Set("Authorization", "Bearer "+tt)
		req.Header.Set("X-Argus-Ops-Token", opsToken)
		req.Header.Set("X-Argus-Session-Token", sessToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Contains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, resp.StatusCode)
	}

	// Nothing was ended by any of it.
	assert.Nil(t, s.session(t, sess.ID).EndedAt)
	assert.True(t, s.srv.Policy().Active(agentID))

	// The page of a view-only token shows the session and no End button.
	ctx := browser(t)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+view.Token)))
	waitState(t, ctx, "ACTIVE", 15*time.Second)
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("button.end").length`))
	require.NoError(t, err)
	assert.Zero(t, n, "a view-only token sees no End button")
}

func TestTenantEnd_BadInputIsRefusedAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	end := s.tenantToken(t, "acme", "view", "end")
	revoked := s.tenantToken(t, "acme", "end")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/tokens/"+revoked.ID+"/revoke", nil, nil))
	sess, _ := s.activate(t, agentID, "")
	path := "/v1/viewer/sessions/" + sess.ID + "/end"

	for _, c := range []struct {
		name, path, bearer string
		body               []byte
		status             int
		code               string
	}{
		{"no token", path, "", nil, 401, "unauthenticated"},
		{"not a token", path, "hello", nil, 401, "invalid_token"},
		{"unknown token", path, "argus_vwr_aaaaaaaaaaaaaaaa_" + strings.Repeat("0", 64), nil, 401, "invalid_token"},
		{"an operator's token", path, s.api.Token, nil, 401, "invalid_token"},
		{"revoked token", path, revoked.Token, nil, 401, "token_revoked"},
		{"bad session id", "/v1/viewer/sessions/not-a-session/end", end.Token, nil, 404, "session_not_found"},
		{"unknown session", "/v1/viewer/sessions/" + uuid.NewString() + "/end", end.Token, nil, 404, "session_not_found"},
		{"oversized body", path, end.Token, []byte(`{"reason":"` + strings.Repeat("x", 5000) + `"}`), 413, "payload_too_large"},
		{"not JSON", path, end.Token, []byte(`{"reason":`), 400, "bad_request"},
		{"unknown field", path, end.Token, []byte(`{"why":"x"}`), 400, "bad_request"},
		{"reason too long", path, end.Token, []byte(`{"reason":"` + strings.Repeat("x", 1100) + `"}`), 400, "value_too_long"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a0, e0 := s.deniedEnds(t, c.code)
			status, code := s.viewerCall(t, "POST", c.path, c.bearer, c.body)
			assert.Equal(t, c.status, status)
			assert.Equal(t, c.code, code)
			a1, e1 := s.deniedEnds(t, c.code)
			assert.Equal(t, a0+1, a1, "the refusal is in audit_log")
			assert.Equal(t, e0+1, e1, "and in events")
		})
	}
	assert.Nil(t, s.session(t, sess.ID).EndedAt, "no refusal ended anything")
	assert.True(t, s.srv.Policy().Active(agentID))

	// Minting refuses what is not a right, or too long a description.
	for _, body := range []map[string]any{
		{"rights": []string{"root"}},
		{"rights": []string{"view", "commands"}},
		{"description": strings.Repeat("d", 300)},
	} {
		err := s.do(t, "POST", "/v1/tenants/acme/tokens", body, nil)
		var apiErr *apiclient.Error
		require.ErrorAs(t, err, &apiErr, "%v", body)
		assert.Equal(t, "bad_request", apiErr.Code)
	}
	// Another tenant's token id is not found under this tenant.
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "beta"}, nil))
	beta := s.tenantToken(t, "beta")
	err := s.do(t, "POST", "/v1/tenants/acme/tokens/"+beta.ID+"/revoke", nil, nil)
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "not_found", apiErr.Code)

	// The end itself, then again: the second is session_ended.
	status, code := s.viewerCall(t, "POST", path, end.Token, []byte(`{"reason":"we are done"}`))
	require.Equal(t, http.StatusOK, status, code)
	status, code = s.viewerCall(t, "POST", path, end.Token, nil)
	assert.Equal(t, http.StatusConflict, status)
	assert.Equal(t, "session_ended", code)
	a, e := s.deniedEnds(t, "session_ended")
	assert.Equal(t, 1, a)
	assert.Equal(t, 1, e)
	var reason string
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT reason FROM audit_log
		WHERE action = 'support.session.end' AND session_id = $1 AND outcome = 'success'`, sess.ID).Scan(&reason))
	assert.Equal(t, "we are done", reason)
}

// Revoking one tenant token drops exactly its connections.
func TestTenantTokens_RevokingOneDropsOnlyItsConnections(t *testing.T) {
	s := newSupportEnv(t, nil)
	one := s.tenantToken(t, "acme", "view")
	two := s.tenantToken(t, "acme", "view", "end")
	url := s.srv.MQTTURL()
	dial := func(tok tenantToken, n int) *mqtttest.Client {
		c, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: fmt.Sprintf("viewer-%s-%d", tok.TenantID, n), Username: "viewer:" + tok.TenantID, Password: tok.Token})
		require.NoError(t, err)
		return c
	}
	c1, c2 := dial(one, 1), dial(two, 2)
	start := time.Now()
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/tokens/"+one.ID+"/revoke", nil, nil))
	select {
	case <-c1.Done():
		assert.Less(t, time.Since(start), time.Second, "dropped at once")
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked token's connection is still up")
	}
	// The other token's connection stays: a subscription round trip on it
	// still works after the revocation.
	tid, _ := topics.ParseTenantID(two.TenantID)
	sa, err := c2.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: tid.RemoteSupport(), QoS: 1}}})
	require.NoError(t, err, "the other token's connection is still up")
	assert.Less(t, sa.Reasons[0], byte(0x80))
	select {
	case <-c2.Done():
		t.Fatal("the other token's connection was dropped")
	default:
	}
	var list struct {
		Tokens []tenantToken `json:"tokens"`
	}
	require.NoError(t, s.do(t, "GET", "/v1/tenants/acme/tokens", nil, &list))
	require.Len(t, list.Tokens, 2)
	assert.Empty(t, list.Tokens[0].Token, "a listed token never carries its secret")
	_, _, err = mqtttest.Dial(t, url, mqtttest.Options{ClientID: "viewer-" + one.TenantID + "-9", Username: "viewer:" + one.TenantID, Password: one.Token})
	assert.Error(t, err, "a revoked token cannot reconnect")
}
