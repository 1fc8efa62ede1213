package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/operators"
)

func do(t *testing.T, method, url, token string, body any) result {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := result{status: resp.StatusCode, body: data}
	var e apierror.Body
	if resp.StatusCode >= 400 && json.Unmarshal(data, &e) == nil && e.Error != nil {
		r.code = e.Error.Code
	}
	return r
}

func TestTenants_CreateListShowAndRefusals(t *testing.T) {
	srv, store, pool := newAPI(t)
	ctx := context.Background()
	_, admin, err := store.Create(ctx, "admin", operators.NewToken{Scopes: []operators.Scope{operators.ScopeTenantAdmin}})
	require.NoError(t, err)
	_, other, err := store.Create(ctx, "other", operators.NewToken{Scopes: []operators.Scope{operators.ScopeAgentAdmin}})
	require.NoError(t, err)

	r := do(t, "POST", srv.URL+"/v1/tenants", admin, map[string]string{"name": "acme"})
	require.Equal(t, 201, r.status, "%s", r.body)

	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		status                    int
		code                      string
	}{
		{"duplicate", "POST", "/v1/tenants", admin, map[string]string{"name": "acme"}, 409, apierror.CodeTenantExists},
		{"bad name", "POST", "/v1/tenants", admin, map[string]string{"name": "Acme Inc"}, 400, apierror.CodeInvalidName},
		{"unknown field", "POST", "/v1/tenants", admin, map[string]any{"name": "x", "armed": true}, 400, apierror.CodeBadRequest},
		{"missing scope", "POST", "/v1/tenants", other, map[string]string{"name": "x"}, 403, apierror.CodeForbidden},
		{"unknown tenant", "GET", "/v1/tenants/nope", admin, nil, 404, apierror.CodeTenantNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, srv.URL+tc.path, tc.token, tc.body)
			assert.Equal(t, tc.status, r.status, "%s", r.body)
			assert.Equal(t, tc.code, r.code)
		})
	}

	r = do(t, "GET", srv.URL+"/v1/tenants/acme", admin, nil)
	require.Equal(t, 200, r.status)
	var got struct {
		Name    string `json:"name"`
		Armed   bool   `json:"armed"`
		Consent bool   `json:"consent"`
	}
	require.NoError(t, json.Unmarshal(r.body, &got))
	assert.Equal(t, "acme", got.Name)
	assert.False(t, got.Armed)
	assert.False(t, got.Consent)

	var logRows, events int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = 'tenant.create'").Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action = 'tenant.create'").Scan(&events))
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
}
