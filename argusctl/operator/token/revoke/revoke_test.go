package revoke_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

func TestRevoke_PostsTheTokensRevokeAndSaysSo(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "POST /v1/operators/alice/tokens/t2/revoke", r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"revoked":"t2"}`))
	}))
	defer api.Close()
	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"operator", "token", "revoke", "alice", "t2", "--server", api.URL, "--token", "tok"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, "token t2 of alice revoked\n", out.String())
}

func TestRevoke_NotFoundIsAnError(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no such token for this operator"}}`))
	}))
	defer api.Close()
	io, _, _, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"operator", "token", "revoke", "alice", "nope", "--server", api.URL, "--token", "tok"})
	err := cmd.Execute()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not_found")
}
