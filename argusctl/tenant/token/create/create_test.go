package create_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
	"github.com/argus-remote/argus/argusctl/tenant/token/create"
)

func env(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
}

func TestCreate_PostsRightsAndPrintsTheTokenAlone(t *testing.T) {
	env(t)
	var body map[string]any
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "POST /v1/tenants/acme/tokens", r.Method+" "+r.URL.Path)
		assert.NoError(t, json.NewDecoder(r.Body).Decode(&body))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"t1","tenant_id":"x","rights":["view","end"],"created_at":"2026-12-01T00:00:00Z","token":"argus_vwr_t1_s"}`))
	}))
	defer api.Close()
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"tenant", "token", "create", "acme", "--rights", "view,end", "--description", "officer", "--server", api.URL, "--token", "tok"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, map[string]any{"rights": []any{"view", "end"}, "description": "officer"}, body)
	assert.Equal(t, "argus_vwr_t1_s\n", out.String(), "the token alone on stdout")
	assert.Contains(t, errOut.String(), "shown once")
	assert.Contains(t, errOut.String(), "view,end")
}

func TestCreate_DefaultsToViewOnly(t *testing.T) {
	env(t)
	io, _, _, _ := iostreams.Test()
	_, f := root.NewCmdRoot(io)
	var got *create.Options
	cmd := create.NewCmdCreate(f, func(_ context.Context, o *create.Options) error { got = o; return nil })
	cmd.SetArgs([]string{"acme"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, "acme", got.Tenant)
	assert.Equal(t, []string{"view"}, got.Rights)
}
