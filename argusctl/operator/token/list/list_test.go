package list_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

const tokens = `{"tokens":[
 {"id":"t1","operator":"alice","scopes":["monitor"],"created_at":"2026-11-01T00:00:00Z","revoked_at":"2026-11-02T00:00:00Z"},
 {"id":"t2","operator":"alice","scopes":["monitor","audit:read"],"created_at":"2026-11-01T00:00:00Z","expires_at":"2026-11-03T00:00:00Z"},
 {"id":"t3","operator":"alice","scopes":["remote_support"],"created_at":"2026-11-01T00:00:00Z","description":"laptop"}]}`

func run(t *testing.T, extra ...string) string {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "GET /v1/operators/alice/tokens", r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(tokens))
	}))
	t.Cleanup(api.Close)
	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(append([]string{"operator", "token", "list", "alice", "--server", api.URL, "--token", "tok"}, extra...))
	require.NoError(t, cmd.Execute())
	return out.String()
}

func TestList_TableShowsEachTokensState(t *testing.T) {
	out := run(t)
	assert.Regexp(t, `t1\s+revoked\s+monitor`, out)
	assert.Regexp(t, `t2\s+expired\s+monitor,audit:read`, out)
	assert.Regexp(t, `t3\s+live\s+remote_support.*laptop`, out)
}

func TestList_JSON(t *testing.T) {
	var got struct {
		Tokens []map[string]any `json:"tokens"`
	}
	require.NoError(t, json.Unmarshal([]byte(run(t, "-o", "json")), &got))
	require.Len(t, got.Tokens, 3)
	assert.Equal(t, "2026-11-02T00:00:00Z", got.Tokens[0]["revoked_at"])
}
