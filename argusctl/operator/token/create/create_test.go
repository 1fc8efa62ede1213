package create_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/operator/token/create"
	"github.com/argus-remote/argus/argusctl/root"
)

func env(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
}

func TestCreate_PostsScopesAndExpiryAndPrintsTheTokenAlone(t *testing.T) {
	env(t)
	var body map[string]any
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "POST /v1/operators/alice/tokens", r.Method+" "+r.URL.Path)
		assert.Equal(t, "Bearer tok", r.Header.Get("Authorization"))
		assert.NoError(t, json.NewDecoder(r.Body).Decode(&body))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"t1","operator":"alice","scopes":["monitor"],"created_at":"2026-12-01T00:00:00Z",
			"expires_at":"2026-12-31T00:00:00Z","token":"argus_op_t1.secret"}`))
	}))
	defer api.Close()
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"operator", "token", "create", "alice", "--scope", "monitor", "--expires-in", "720h",
		"--description", "grafana", "--server", api.URL, "--token", "tok"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, map[string]any{"scopes": []any{"monitor"}, "expires_in": "720h0m0s", "description": "grafana"}, body)
	assert.Equal(t, "argus_op_t1.secret\n", out.String(), "the token alone on stdout")
	assert.Contains(t, errOut.String(), "shown once")
	assert.Contains(t, errOut.String(), "2026-12-31")
}

func TestCreate_FlagsReachRun(t *testing.T) {
	env(t)
	io, _, _, _ := iostreams.Test()
	_, f := root.NewCmdRoot(io)
	var got *create.Options
	cmd := create.NewCmdCreate(f, func(_ context.Context, o *create.Options) error { got = o; return nil })
	cmd.SetArgs([]string{"bob", "--scope", "monitor", "--scope", "audit:read", "--expires-in", "2h"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, "bob", got.Operator)
	assert.Equal(t, []string{"monitor", "audit:read"}, got.Scopes)
	assert.Equal(t, 2*time.Hour, got.ExpiresIn)
}

func TestCreate_RefusesAnExpiryNotPositive(t *testing.T) {
	env(t)
	for _, v := range []string{"0s", "-5m"} {
		io, _, _, _ := iostreams.Test()
		_, f := root.NewCmdRoot(io)
		called := false
		cmd := create.NewCmdCreate(f, func(context.Context, *create.Options) error { called = true; return nil })
		cmd.SetArgs([]string{"bob", "--scope", "monitor", "--expires-in", v})
		err := cmd.Execute()
		require.Error(t, err, v)
		assert.Contains(t, err.Error(), "--expires-in must be positive")
		assert.False(t, called)
	}
}
