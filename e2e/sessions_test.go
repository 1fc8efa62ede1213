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

	proc.Stop()
	testenv.Eventually(t, 5*time.Second, func() bool { return !s.online(agentID) }, "agent offline")
	assert.Equal(t, "agent_offline", activate(body(agentID, "")))

	var denied int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx,
		"SELECT count(*) FROM audit_log WHERE action = 'support.activate' AND outcome = 'denied'").Scan(&denied))
	var deniedEvents int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx,
		"SELECT count(*) FROM events WHERE action = 'support.activate' AND payload->>'outcome' = 'denied'").Scan(&deniedEvents))
	assert.Equal(t, 6, denied, "every refused activation is audited")
	assert.Equal(t, 6, deniedEvents)
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
