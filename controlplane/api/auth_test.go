package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/api"
	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func newAPI(t *testing.T) (*httptest.Server, *operators.Store, *pgxpool.Pool) {
	t.Helper()
	pool := testenv.Pool(t)
	store := operators.NewStore(pool)
	srv := httptest.NewServer((&api.Server{
		Pool: pool, Operators: store, Tenants: tenants.NewStore(pool), Agents: agents.NewStore(pool),
		Log: slog.New(slog.DiscardHandler),
	}).Handler())
	t.Cleanup(srv.Close)
	return srv, store, pool
}

type result struct {
	status int
	code   string
	body   []byte
}

func get(t *testing.T, url, authorization string) result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var e apierror.Body
	if resp.StatusCode >= 400 {
		require.NoError(t, json.Unmarshal(body, &e), "error body is JSON: %s", body)
		require.NotNil(t, e.Error, "error body has the error shape: %s", body)
	}
	r := result{status: resp.StatusCode, body: body}
	if e.Error != nil {
		r.code = e.Error.Code
	}
	return r
}

func TestAuth_EachFailureHasItsCode(t *testing.T) {
	srv, store, pool := newAPI(t)
	ctx := context.Background()

	_, admin, err := store.Create(ctx, "admin", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}})
	require.NoError(t, err)
	_, auditor, err := store.Create(ctx, "auditor", operators.NewToken{Scopes: []operators.Scope{operators.ScopeAuditRead}})
	require.NoError(t, err)
	expiredP, expired, err := store.Create(ctx, "expired", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}, TTL: time.Hour})
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "UPDATE operator_tokens SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 hour' WHERE id = $1", expiredP.TokenID)
	require.NoError(t, err)
	revokedP, revoked, err := store.Create(ctx, "revoked", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}})
	require.NoError(t, err)
	require.NoError(t, store.RevokeToken(ctx, revokedP.OperatorName, revokedP.TokenID, audit.Entry{Actor: "system"}))

	// A well-formed token whose id exists but whose secret is wrong.
	forged := admin[:len(admin)-8] + "00000000"
	unknown := "argus_pat_aaaaaaaaaaaaaaaa_" + admin[len(admin)-64:]

	for _, tc := range []struct {
		name, auth string
		status     int
		code       string
	}{
		{"missing", "", 401, apierror.CodeUnauthenticated},
		{"not bearer", "Basic " + admin, 401, apierror.CodeInvalidToken},
		{"malformed", "Bearer argus_pat_nope", 401, apierror.CodeInvalidToken},
		{"unknown", "Bearer " + unknown, 401, apierror.CodeInvalidToken},
		{"wrong secret", "Bearer " + forged, 401, apierror.CodeInvalidToken},
		{"expired", "Bearer " + expired, 401, apierror.CodeTokenExpired},
		{"revoked", "Bearer " + revoked, 401, apierror.CodeTokenRevoked},
		{"missing scope", "Bearer " + auditor, 403, apierror.CodeForbidden},
		{"good", "Bearer " + admin, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := get(t, srv.URL+"/v1/operators", tc.auth)
			assert.Equal(t, tc.status, r.status, "body: %s", r.body)
			assert.Equal(t, tc.code, r.code)
		})
	}
}

func TestAuth_EveryRefusalIsAudited(t *testing.T) {
	srv, store, pool := newAPI(t)
	ctx := context.Background()
	_, auditor, err := store.Create(ctx, "auditor", operators.NewToken{Scopes: []operators.Scope{operators.ScopeAuditRead}})
	require.NoError(t, err)

	for _, tc := range []struct {
		name, auth, action, actor, code string
	}{
		{"missing", "", "api.authenticate", "anonymous", apierror.CodeUnauthenticated},
		{"malformed", "Bearer argus_pat_nope", "api.authenticate", "anonymous", apierror.CodeInvalidToken},
		{"missing scope", "Bearer " + auditor, "api.authorize", "operator:auditor", apierror.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := get(t, srv.URL+"/v1/operators", tc.auth)
			require.Equal(t, tc.code, r.code)
			var logRows, events int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log
				WHERE action = $1 AND actor = $2 AND outcome = 'denied' AND detail->>'code' = $3 AND detail->>'path' = '/v1/operators'`,
				tc.action, tc.actor, tc.code).Scan(&logRows))
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = $1 AND payload->>'actor' = $2`,
				tc.action, tc.actor).Scan(&events))
			assert.Equal(t, 1, logRows, "the refusal is in the audit log")
			assert.GreaterOrEqual(t, events, 1, "the refusal is in the event chain")
		})
	}
}

func TestWhoami_ShowsOperatorAndScopes(t *testing.T) {
	srv, store, _ := newAPI(t)
	_, tok, err := store.Create(context.Background(), "alice", operators.NewToken{
		Scopes: []operators.Scope{operators.ScopeRemoteSupport, operators.ScopeMonitor},
	})
	require.NoError(t, err)

	r := get(t, srv.URL+"/v1/whoami", "Bearer "+tok)
	require.Equal(t, 200, r.status)
	var p operators.Principal
	require.NoError(t, json.Unmarshal(r.body, &p))
	assert.Equal(t, "alice", p.OperatorName)
	assert.ElementsMatch(t, []operators.Scope{operators.ScopeRemoteSupport, operators.ScopeMonitor}, p.Scopes)
	assert.NotContains(t, string(r.body), tok[len(tok)-64:], "the secret is never echoed")
}

func TestStore_SecretIsStoredOnlyHashed(t *testing.T) {
	_, store, pool := newAPI(t)
	_, tok, err := store.Create(context.Background(), "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	var n int
	require.NoError(t, pool.QueryRow(context.Background(),
		"SELECT count(*) FROM operator_tokens WHERE position(convert_to($1, 'UTF8') in secret_hash) > 0 OR id = $1 OR description = $1",
		tok[len(tok)-64:]).Scan(&n))
	assert.Zero(t, n)
}

func TestHealthAndReadiness(t *testing.T) {
	srv, _, _ := newAPI(t)
	assert.Equal(t, 200, get(t, srv.URL+"/healthz", "").status)
	r := get(t, srv.URL+"/readyz", "")
	assert.Equal(t, 200, r.status, "body: %s", r.body)
	assert.Equal(t, 404, get(t, srv.URL+"/nope", "").status)
}

func TestReadiness_FailsOnUnmigratedDatabase(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), testenv.EmptyDatabase(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	srv := httptest.NewServer((&api.Server{Pool: pool, Operators: operators.NewStore(pool), Log: slog.New(slog.DiscardHandler)}).Handler())
	t.Cleanup(srv.Close)
	r := get(t, srv.URL+"/readyz", "")
	assert.Equal(t, 503, r.status)
	assert.Equal(t, apierror.CodeUnavailable, r.code)
}
