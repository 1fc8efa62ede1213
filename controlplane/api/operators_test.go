package api_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/api"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/rowcache"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/internal/testenv"
)

// monitorKicks records the monitor disconnections the API asks for.
type monitorKicks struct {
	mu     sync.Mutex
	tokens []string
}

func (k *monitorKicks) RevokeAgent(string)               {}
func (k *monitorKicks) DisconnectViewerTokens(...string) {}
func (k *monitorKicks) DisconnectMonitorTokens(ids ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.tokens = append(k.tokens, ids...)
}

func (k *monitorKicks) got() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.tokens...)
}

// newCachedAPI is an API whose operator store caches token rows, kept
// fresh by LISTEN/NOTIFY, as the server's is.
func newCachedAPI(t *testing.T) (*httptest.Server, *operators.Store, *pgxpool.Pool, *monitorKicks) {
	t.Helper()
	pool := testenv.Pool(t)
	return newCachedAPIHearing(t, pool, pool)
}

// newCachedAPIHearing is newCachedAPI whose cache hears the changes
// announced in the database of heard: another database than pool's makes
// a cache that is live but hears nothing, so only the store's own
// evictions keep it fresh.
func newCachedAPIHearing(t *testing.T, pool, heard *pgxpool.Pool) (*httptest.Server, *operators.Store, *pgxpool.Pool, *monitorKicks) {
	t.Helper()
	l := rowcache.NewListener(func(ctx context.Context) (*pgx.Conn, error) {
		return pgx.ConnectConfig(ctx, heard.Config().ConnConfig.Copy())
	}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 5*time.Second, l.Live, "row listener up")
	store := operators.NewStore(pool)
	store.UseCache(l)
	kicks := &monitorKicks{}
	srv := httptest.NewServer((&api.Server{
		Pool: pool, Operators: store, Tenants: tenants.NewStore(pool), Agents: agents.NewStore(pool),
		AgentControl: kicks, Log: slog.New(slog.DiscardHandler),
	}).Handler())
	t.Cleanup(srv.Close)
	return srv, store, pool, kicks
}

type mintedToken struct {
	ID        string     `json:"id"`
	Operator  string     `json:"operator"`
	Scopes    []string   `json:"scopes"`
	ExpiresAt *time.Time `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
	Token     string     `json:"token"`
}

func auditCount(t *testing.T, pool *pgxpool.Pool, action string) (logRows, events int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = $1", action).Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE payload->>'action' = $1", action).Scan(&events))
	return logRows, events
}

func TestOperatorTokens_CreateListRevokeAndTheRevokedTokenIsRefusedAtOnce(t *testing.T) {
	srv, store, pool, kicks := newCachedAPI(t)
	ctx := context.Background()
	_, admin, err := store.Create(ctx, "admin", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}})
	require.NoError(t, err)
	_, first, err := store.Create(ctx, "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)

	// A second token for an existing operator: the way a lost one is replaced.
	r := do(t, "POST", srv.URL+"/v1/operators/bob/tokens", admin, map[string]any{
		"scopes": []string{"monitor", "audit:read"}, "description": "grafana", "expires_in": "720h"})
	require.Equal(t, http.StatusCreated, r.status, "%s", r.body)
	var tok mintedToken
	require.NoError(t, json.Unmarshal(r.body, &tok))
	assert.Equal(t, "bob", tok.Operator)
	assert.ElementsMatch(t, []string{"monitor", "audit:read"}, tok.Scopes)
	require.NotNil(t, tok.ExpiresAt)
	assert.WithinDuration(t, time.Now().Add(720*time.Hour), *tok.ExpiresAt, time.Minute)
	require.NotEmpty(t, tok.Token)

	// It works, and is now cached.
	require.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+tok.Token).status)
	require.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+tok.Token).status)

	r = do(t, "GET", srv.URL+"/v1/operators/bob/tokens", admin, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	var list struct {
		Tokens []mintedToken `json:"tokens"`
	}
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Tokens, 2)
	assert.Equal(t, tok.ID, list.Tokens[1].ID)
	assert.NotContains(t, string(r.body), tok.Token, "a listing never shows a secret")

	r = do(t, "POST", srv.URL+"/v1/operators/bob/tokens/"+tok.ID+"/revoke", admin, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	// The very next request is refused: the cached row went with the revocation.
	res := get(t, srv.URL+"/v1/whoami", "Bearer "+tok.Token)
	assert.Equal(t, http.StatusUnauthorized, res.status)
	assert.Equal(t, "token_revoked", res.code)
	assert.Equal(t, []string{tok.ID}, kicks.got(), "its monitor connections are dropped")
	// The other token is untouched; a token of another operator is not found.
	assert.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+first).status)
	assert.Equal(t, "not_found", do(t, "POST", srv.URL+"/v1/operators/admin/tokens/"+tok.ID+"/revoke", admin, nil).code)
	assert.Equal(t, "not_found", do(t, "GET", srv.URL+"/v1/operators/nobody/tokens", admin, nil).code)

	for _, action := range []string{"operator.token.create", "operator.token.revoke"} {
		l, e := auditCount(t, pool, action)
		assert.Equal(t, 1, l, "%s in audit_log", action)
		assert.Equal(t, 1, e, "%s in events", action)
	}
}

func TestOperatorTokens_RefusesBadInput(t *testing.T) {
	srv, store, _, _ := newCachedAPI(t)
	ctx := context.Background()
	_, admin, err := store.Create(ctx, "admin", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}})
	require.NoError(t, err)
	_, other, err := store.Create(ctx, "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	for name, body := range map[string]map[string]any{
		"zero expiry":     {"scopes": []string{"monitor"}, "expires_in": "0s"},
		"negative expiry": {"scopes": []string{"monitor"}, "expires_in": "-5m"},
		"bad expiry":      {"scopes": []string{"monitor"}, "expires_in": "soon"},
		"no scopes":       {"scopes": []string{}},
		"unknown scope":   {"scopes": []string{"root"}},
	} {
		r := do(t, "POST", srv.URL+"/v1/operators/bob/tokens", admin, body)
		assert.Equal(t, http.StatusBadRequest, r.status, "%s: %s", name, r.body)
	}
	assert.Equal(t, http.StatusNotFound, do(t, "POST", srv.URL+"/v1/operators/nobody/tokens", admin, map[string]any{"scopes": []string{"monitor"}}).status)
	assert.Equal(t, "forbidden", do(t, "POST", srv.URL+"/v1/operators/bob/tokens", other, map[string]any{"scopes": []string{"operator:admin"}}).code,
		"minting tokens takes operator:admin")
	assert.Equal(t, http.StatusConflict, do(t, "POST", srv.URL+"/v1/operators/admin/disable", admin, nil).status, "no operator disables itself")
}

func TestOperators_DisabledOperatorsTokensAreRefusedAtOnce(t *testing.T) {
	srv, store, pool, kicks := newCachedAPI(t)
	ctx := context.Background()
	_, admin, err := store.Create(ctx, "admin", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}})
	require.NoError(t, err)
	bob, tok1, err := store.Create(ctx, "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	r := do(t, "POST", srv.URL+"/v1/operators/bob/tokens", admin, map[string]any{"scopes": []string{"audit:read"}})
	require.Equal(t, http.StatusCreated, r.status, "%s", r.body)
	var second mintedToken
	require.NoError(t, json.Unmarshal(r.body, &second))
	for _, tok := range []string{tok1, second.Token} {
		require.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+tok).status)
	}

	r = do(t, "POST", srv.URL+"/v1/operators/bob/disable", admin, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	for _, tok := range []string{tok1, second.Token} {
		res := get(t, srv.URL+"/v1/whoami", "Bearer "+tok)
		assert.Equal(t, http.StatusUnauthorized, res.status)
		assert.Equal(t, "operator_disabled", res.code)
	}
	assert.ElementsMatch(t, []string{bob.TokenID, second.ID}, kicks.got(), "every monitor connection of the operator is dropped")

	r = do(t, "POST", srv.URL+"/v1/operators/bob/enable", admin, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	assert.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+tok1).status)

	for _, action := range []string{"operator.disable", "operator.enable"} {
		l, e := auditCount(t, pool, action)
		assert.Equal(t, 1, l, "%s in audit_log", action)
		assert.Equal(t, 1, e, "%s in events", action)
	}
}

// Revoking a token and disabling its operator take effect before the call
// returns, by the store's own evictions, not only when LISTEN/NOTIFY
// reports the change: this cache hears nothing.
func TestOperatorTokens_RevokeAndDisableEvictTheCacheThemselves(t *testing.T) {
	pool := testenv.Pool(t)
	srv, store, _, _ := newCachedAPIHearing(t, pool, testenv.Pool(t))
	ctx := context.Background()
	_, admin, err := store.Create(ctx, "admin", operators.NewToken{Scopes: []operators.Scope{operators.ScopeOperatorAdmin}})
	require.NoError(t, err)
	bob, bobTok, err := store.Create(ctx, "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	_, carolTok, err := store.Create(ctx, "carol", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	// The first use records last_used_at (and drops the row); the second
	// caches it.
	for _, tok := range []string{bobTok, bobTok, carolTok, carolTok} {
		require.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+tok).status)
	}

	// A change the store did not make is not heard: the cached row stands.
	_, err = pool.Exec(ctx, "UPDATE operator_tokens SET revoked_at = now() WHERE id = $1", bob.TokenID)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, get(t, srv.URL+"/v1/whoami", "Bearer "+bobTok).status, "the cache hears nothing")
	_, err = pool.Exec(ctx, "UPDATE operator_tokens SET revoked_at = NULL WHERE id = $1", bob.TokenID)
	require.NoError(t, err)

	require.Equal(t, http.StatusOK, do(t, "POST", srv.URL+"/v1/operators/bob/tokens/"+bob.TokenID+"/revoke", admin, nil).status)
	assert.Equal(t, "token_revoked", get(t, srv.URL+"/v1/whoami", "Bearer "+bobTok).code)
	require.Equal(t, http.StatusOK, do(t, "POST", srv.URL+"/v1/operators/carol/disable", admin, nil).status)
	assert.Equal(t, "operator_disabled", get(t, srv.URL+"/v1/whoami", "Bearer "+carolTok).code)
}
