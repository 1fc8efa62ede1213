package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/testenv"
)

func apiCode(err error) string {
	var e *apiclient.Error
	if err == nil {
		return ""
	}
	if ok := asAPIError(err, &e); ok {
		return e.Code
	}
	return err.Error()
}

func asAPIError(err error, target **apiclient.Error) bool {
	e, ok := err.(*apiclient.Error)
	if ok {
		*target = e
	}
	return ok
}

func TestGate_EachFactorDroppedAloneIsForbiddenAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	ctx := context.Background()
	_, noScope, err := operators.NewStore(s.srv.Database().Pool).Create(ctx, "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeTenantAdmin, operators.ScopeTenantArm, operators.ScopeAgentAdmin}})
	require.NoError(t, err)
	body := map[string]string{"tenant": "acme", "agent": "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10", "reason": "x"}

	for _, tc := range []struct {
		name   string
		client apiclient.Client
		factor string
	}{
		{"all three", *s.api, ""},
		{"wrong source address", apiclient.Client{BaseURL: s.api.BaseURL, Token: s.api.Token, OpsToken: opsToken, HTTP: clientFrom("127.0.0.2")}, "source_ip"},
		{"no ops token", apiclient.Client{BaseURL: s.api.BaseURL, Token: s.api.Token}, "ops_token"},
		{"wrong ops token", apiclient.Client{BaseURL: s.api.BaseURL, Token: s.api.Token, OpsToken: opsToken[:len(opsToken)-1] + "X"}, "ops_token"},
		{"no operator token", apiclient.Client{BaseURL: s.api.BaseURL, OpsToken: opsToken}, "operator_token"},
		{"token without remote_support", apiclient.Client{BaseURL: s.api.BaseURL, Token: noScope, OpsToken: opsToken}, "remote_support_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			count := func() int {
				var n int
				require.NoError(t, s.srv.Database().Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.gate'
					AND outcome = 'denied' AND detail->'failed_factors' = jsonb_build_array($1::text)`, tc.factor).Scan(&n))
				return n
			}
			before := count()
			err := tc.client.Do(ctx, "POST", "/v1/support/sessions", body, nil)
			if tc.factor == "" {
				assert.Equal(t, "agent_not_found", apiCode(err), "the gate lets it through to the checks")
				return
			}
			var e *apiclient.Error
			require.True(t, asAPIError(err, &e), "%v", err)
			assert.Equal(t, http.StatusForbidden, e.Status)
			assert.Equal(t, "forbidden", e.Code)
			assert.NotContains(t, e.Message, tc.factor, "the response does not say which factor failed")

			assert.Equal(t, before+1, count(), "the audit says which factor failed")
		})
	}
	// Commands sit behind the same gate.
	c := apiclient.Client{BaseURL: s.api.BaseURL, Token: s.api.Token}
	err = c.Do(ctx, "POST", "/v1/support/sessions/0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10/commands", map[string]string{"name": "ping"}, nil)
	assert.Equal(t, "forbidden", apiCode(err))
}

func TestGate_RemoteSupportDisabledRefusesEverySupportEndpoint(t *testing.T) {
	s := newSupportEnv(t, map[string]any{"remote-support-enabled": false})
	for _, ep := range []struct{ method, path string }{
		{"POST", "/v1/support/sessions"},
		{"GET", "/v1/support/sessions"},
		{"GET", "/v1/support/sessions/0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"},
		{"POST", "/v1/support/sessions/0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10/commands"},
		{"POST", "/v1/support/sessions/0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10/deactivate"},
	} {
		err := s.do(t, ep.method, ep.path, map[string]string{}, nil)
		assert.Equal(t, "remote_support_disabled", apiCode(err), "%s %s", ep.method, ep.path)
	}
}

func TestActivate_RefusalsInOrderEachAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	ctx := context.Background()
	agentID, _, proc := s.runAgent(t, "cam-gw-1")
	body := func(agent, ttl string) map[string]string {
		return map[string]string{"tenant": "acme", "agent": agent, "reason": "INC-9", "ttl": ttl}
	}
	activate := func(b map[string]string) string {
		return apiCode(s.do(t, "POST", "/v1/support/sessions", b, nil))
	}

	assert.Equal(t, "agent_not_found", activate(body("0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10", "")))
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "other"}, nil))
	wrongTenant := body(agentID, "")
	wrongTenant["tenant"] = "other"
	assert.Equal(t, "agent_not_found", activate(wrongTenant), "an agent of another tenant is not found")

	// The operator holds every scope; consent is still required.
	assert.Equal(t, "tenant_consent_required", activate(body(agentID, "")))
	assert.Equal(t, "tenant_consent_required", apiCode(s.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "x"}, nil)),
		"arming without consent fails too")
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane Roe"}, nil))
	assert.Equal(t, "tenant_not_armed", activate(body(agentID, "")))
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-9"}, nil))

	assert.Equal(t, "ttl_exceeds_cap", activate(body(agentID, "121m")))

	// There is no override: an extra field is an error, never a switch.
	for _, field := range []string{"override", "force", "skip_consent"} {
		b := map[string]any{"tenant": "acme", "agent": agentID, "reason": "x", field: true}
		assert.Equal(t, "bad_request", apiCode(s.do(t, "POST", "/v1/support/sessions", b, nil)), field)
	}

	proc.Stop()
	testenv.Eventually(t, 5*time.Second, func() bool { return !s.online(agentID) }, "agent offline")
	assert.Equal(t, "agent_offline", activate(body(agentID, "")))

	var denied int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx,
		"SELECT count(*) FROM audit_log WHERE action = 'support.activate' AND outcome = 'denied'").Scan(&denied))
	var deniedEvents int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx,
		"SELECT count(*) FROM events WHERE action = 'support.activate' AND payload->>'outcome' = 'denied'").Scan(&deniedEvents))
	// Six refused by the checks, three for their bodies: past the gate,
	// every refusal is audited.
	assert.Equal(t, 9, denied, "every refused activation is audited")
	assert.Equal(t, 9, deniedEvents)
}

func TestActivate_BusyRevokedAndTokenBoundToItsSession(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	a1, _, _ := s.runAgent(t, "cam-gw-1")
	a2, _, _ := s.runAgent(t, "cam-gw-2")
	s1, tok1 := s.activate(t, a1, "")
	s2, tok2 := s.activate(t, a2, "")

	err := s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": a1, "reason": "again"}, nil)
	assert.Equal(t, "agent_busy", apiCode(err))

	_, err = s.command(t, s2.ID, tok1, "ping")
	assert.Equal(t, "session_token_invalid", apiCode(err), "session 1's token does not open session 2")
	_, err = s.command(t, s1.ID, tok2, "ping")
	assert.Equal(t, "session_token_invalid", apiCode(err))
	res, err := s.command(t, s1.ID, tok1, "ping")
	require.NoError(t, err)
	assert.Equal(t, "ok", res.Status)

	_, err = s.command(t, s1.ID, tok1, "shell")
	assert.Equal(t, "command_not_allowed", apiCode(err))

	require.NoError(t, s.do(t, "POST", "/v1/agents/"+a2+"/revoke", map[string]string{"reason": "stolen"}, nil))
	err = s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": a2, "reason": "x"}, nil)
	assert.Equal(t, "agent_revoked", apiCode(err))
}

func TestSession_LifecycleAuditedTwiceAndVisibleToTheTenant(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, proc := s.runAgent(t, "cam-gw-1")

	sess, token := s.activate(t, agentID, "30m")
	assert.True(t, sess.Active)
	assert.NotNil(t, sess.AckedAt, "the agent acknowledged")
	assert.WithinDuration(t, time.Now().Add(30*time.Minute), sess.ExpiresAt, time.Minute)
	proc.WaitLog(t, 0, "REMOTE SUPPORT SESSION ACTIVE", 1, 5*time.Second)

	var ts struct {
		Active   bool `json:"active"`
		Sessions []struct {
			SessionID string `json:"session_id"`
			AgentID   string `json:"agent_id"`
			Operator  string `json:"operator"`
		} `json:"sessions"`
	}
	s.readTenantStatus(t, sess.TenantID, &ts)
	require.True(t, ts.Active, "the tenant's indicator is on")
	require.Len(t, ts.Sessions, 1)
	assert.Equal(t, sess.ID, ts.Sessions[0].SessionID)
	assert.Equal(t, "alice", ts.Sessions[0].Operator)

	out, _, err := testenv.Run(t, nil, "argus-agent", "status", "--state-dir", dir)
	require.NoError(t, err)
	assert.Contains(t, out, "REMOTE SUPPORT ACTIVE")
	assert.Contains(t, out, sess.ID)

	// The token is stored only as its hash.
	var hashed, plain int
	pool := s.srv.Database().Pool
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM support_sessions WHERE token_hash = sha256(convert_to($1, 'UTF8'))", token).Scan(&hashed))
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%' OR reason LIKE '%' || $1 || '%'", token[len(token)-64:]).Scan(&plain))
	assert.Equal(t, 1, hashed)
	assert.Zero(t, plain, "the token never reaches the audit")

	res, err := s.command(t, sess.ID, token, "ping")
	require.NoError(t, err)
	assert.Equal(t, "ok", res.Status)
	assert.Contains(t, string(res.Data), `"pong":true`)
	res, err = s.command(t, sess.ID, token, "agent_info")
	require.NoError(t, err)
	assert.Contains(t, string(res.Data), agentID)

	require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	s.assertClosed(t, sess, dir, proc, "deactivated")
	_, err = s.command(t, sess.ID, token, "ping")
	assert.Equal(t, "session_ended", apiCode(err))

	for action, want := range map[string]int{
		"support.activate":          1,
		"support.command.requested": 2,
		"support.command.completed": 2,
		"support.session.end":       1,
		"support.command":           1, // the refused one after the end
	} {
		logRows, events := s.auditPair(t, action, sess.ID)
		assert.Equal(t, want, logRows, "%s audit_log rows", action)
		assert.Equal(t, want, events, "%s events rows", action)
	}
}

func TestSession_EveryWayItEnds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ttl    string
		end    func(t *testing.T, s *supportEnv, sessionID, agentID, dir string)
		reason string
	}{
		{"deactivated", "", func(t *testing.T, s *supportEnv, id, _, _ string) {
			require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+id+"/deactivate", nil, nil))
		}, "deactivated"},
		{"expired", "2s", func(t *testing.T, s *supportEnv, id, _, _ string) {}, "expired"},
		{"tenant disarmed", "", func(t *testing.T, s *supportEnv, _, _, _ string) {
			require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/disarm", map[string]string{"reason": "done"}, nil))
		}, "tenant_disarmed"},
		{"consent withdrawn", "", func(t *testing.T, s *supportEnv, _, _, _ string) {
			require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/consent/withdraw", map[string]string{"reason": "contract ended"}, nil))
		}, "consent_withdrawn"},
		{"kill switch", "", func(t *testing.T, s *supportEnv, _, _, dir string) {
			_, stderr, err := testenv.Run(t, nil, "argus-agent", "kill-switch", "engage", "--state-dir", dir, "--reason", "freeze")
			require.NoError(t, err, stderr)
		}, "agent_kill_switch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSupportEnv(t, nil)
			s.consentAndArm(t)
			agentID, dir, proc := s.runAgent(t, "cam-gw-1")
			sess, token := s.activate(t, agentID, tc.ttl)
			// A command first, so the server holds the session in its cache.
			s.awaitAck(t, sess.ID)
			res, err := s.command(t, sess.ID, token, "ping")
			require.NoError(t, err)
			require.Equal(t, "ok", res.Status)
			tc.end(t, s, sess.ID, agentID, dir)
			s.assertClosed(t, sess, dir, proc, tc.reason)
			_, err = s.command(t, sess.ID, token, "ping")
			assert.Contains(t, []string{"session_ended", "session_expired"}, apiCode(err), "a command after the end is refused")
			logRows, events := s.auditPair(t, "support.session.end", sess.ID)
			assert.Equal(t, 1, logRows, "one audit_log row for the end")
			assert.Equal(t, 1, events, "one events row for the end")
		})
	}
}

func TestSession_EndsWhenAgentRevoked(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, proc := s.runAgent(t, "cam-gw-1")
	sess, token := s.activate(t, agentID, "")
	mark := proc.LineCount()
	require.NoError(t, s.do(t, "POST", "/v1/agents/"+agentID+"/revoke", map[string]string{"reason": "stolen"}, nil))
	got := s.session(t, sess.ID)
	assert.Equal(t, "agent_revoked", got.EndReason)
	assert.False(t, s.srv.Policy().Active(agentID))
	_, err := s.command(t, sess.ID, token, "ping")
	assert.Equal(t, "session_ended", apiCode(err))
	// Disconnected, its session ends on its side too.
	proc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
	logRows, events := s.auditPair(t, "support.session.end", sess.ID)
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
}

func TestKillSwitch_RefusesActivationUntilReleased(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, proc := s.runAgent(t, "cam-gw-1")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "kill-switch", "engage", "--state-dir", dir)
	require.NoError(t, err, stderr)
	proc.WaitLog(t, 0, "KILL SWITCH ENGAGED", 1, 5*time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool {
		return apiCode(s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "x"}, nil)) == "agent_kill_switch_engaged"
	}, "activation refused with the kill switch engaged")

	_, stderr, err = testenv.Run(t, nil, "argus-agent", "kill-switch", "release", "--state-dir", dir)
	require.NoError(t, err, stderr)
	proc.WaitLog(t, 0, "kill switch released", 1, 5*time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool {
		return s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "x"}, nil) == nil
	}, "activation works once released")
}

// TestActivate_RaceWithDisarmLeavesNothingLive races activations against
// disarms: whenever the tenant ends up disarmed, no session may be live.
func TestActivate_RaceWithDisarmLeavesNothingLive(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	ctx := context.Background()
	for i := 0; i < 8; i++ {
		require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "again"}, nil))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "race"}, nil)
		}()
		require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/disarm", map[string]string{"reason": "race"}, nil))
		<-done
		var live int
		require.NoError(t, s.srv.Database().Pool.QueryRow(ctx, `SELECT count(*) FROM support_sessions s JOIN tenants t ON t.id = s.tenant_id
			WHERE s.ended_at IS NULL AND t.armed_at IS NULL`).Scan(&live))
		require.Zero(t, live, "round %d: a live session on a disarmed tenant", i)
		// End anything the race left (on an armed tenant there is none now).
		var ids []string
		rows, err := s.srv.Database().Pool.Query(ctx, "SELECT id::text FROM support_sessions WHERE ended_at IS NULL")
		require.NoError(t, err)
		for rows.Next() {
			var id string
			require.NoError(t, rows.Scan(&id))
			ids = append(ids, id)
		}
		rows.Close()
		for _, id := range ids {
			_ = s.do(t, "POST", "/v1/support/sessions/"+id+"/deactivate", nil, nil)
		}
	}
}

// The server caches the sessions and operator tokens it checks on every
// request. A change made in the database by anyone else (another node, an
// administrator at a psql prompt) must reach it promptly: well inside the
// cache's ten-second bound, so only the change announcement can explain it.
func TestCachedRows_ChangesMadeElsewhereApplyPromptly(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	sess, token := s.activate(t, agentID, "")
	res, err := s.command(t, sess.ID, token, "ping")
	require.NoError(t, err)
	require.Equal(t, "ok", res.Status)

	pool := s.srv.Database().Pool
	ctx := context.Background()
	_, err = pool.Exec(ctx, "UPDATE support_sessions SET ended_at = now(), end_reason = 'deactivated' WHERE id = $1", sess.ID)
	require.NoError(t, err)
	testenv.Eventually(t, 2*time.Second, func() bool {
		_, err := s.command(t, sess.ID, token, "ping")
		return apiCode(err) == "session_ended"
	}, "command refused once the session ended in the database")

	var who struct {
		TokenID string `json:"token_id"`
	}
	require.NoError(t, s.do(t, "GET", "/v1/whoami", nil, &who))
	require.NotEmpty(t, who.TokenID)
	_, err = pool.Exec(ctx, "UPDATE operator_tokens SET revoked_at = now() WHERE id = $1", who.TokenID)
	require.NoError(t, err)
	testenv.Eventually(t, 2*time.Second, func() bool {
		return apiCode(s.do(t, "GET", "/v1/whoami", nil, &who)) == "token_revoked"
	}, "operator token refused once revoked in the database")
}

func TestActivate_NonPositiveTTLRefusedAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	ctx := context.Background()
	for _, ttl := range []string{"0s", "0", "-5m"} {
		err := s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": "INC-9", "ttl": ttl}, nil)
		assert.Equal(t, "ttl_too_short", apiCode(err), "ttl %q", ttl)
		var st *apiclient.Error
		if assert.ErrorAs(t, err, &st, "ttl %q", ttl) {
			assert.Equal(t, 400, st.Status, "ttl %q", ttl)
		}
	}
	var live int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx, "SELECT count(*) FROM support_sessions").Scan(&live))
	assert.Zero(t, live, "no session opened")
	var denied, deniedEvents int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx,
		"SELECT count(*) FROM audit_log WHERE action = 'support.activate' AND outcome = 'denied' AND detail->>'code' = 'ttl_too_short'").Scan(&denied))
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx,
		"SELECT count(*) FROM events WHERE action = 'support.activate' AND payload->>'outcome' = 'denied'").Scan(&deniedEvents))
	assert.Equal(t, 3, denied, "each refusal audited with its code")
	assert.Equal(t, 3, deniedEvents)
}
