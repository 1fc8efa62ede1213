package clustercmd_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/clustercmd"
	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

const answer = `{"node":"n2","nodes":[
 {"id":"n1","version":"1.2.0","lease_age_seconds":0.8,"alive":true,"fenced":false,"agents_held":3,"reachable":true,"api_url":"http://a:1"},
 {"id":"n2","version":"1.2.0","lease_age_seconds":1.2,"alive":true,"fenced":true,"agents_held":0,"reachable":true,"this_node":true},
 {"id":"n3","version":"1.1.0","lease_age_seconds":42,"alive":false,"fenced":false,"agents_held":0,"reachable":false}]}`

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "GET", r.Method)
		assert.Equal(t, "/v1/cluster", r.URL.Path)
		assert.Equal(t, "Bearer tok", r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(answer))
	}))
	defer api.Close()
	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(append([]string{"cluster", "status", "--server", api.URL, "--token", "tok"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

func TestClusterStatus_TableShowsEachNodesState(t *testing.T) {
	out, err := run(t)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, out)
	assert.Regexp(t, `^NODE\s+STATE\s+LEASE AGE\s+VERSION\s+AGENTS\s+FENCED\s+REACHABLE\s+API$`, lines[0])
	assert.Regexp(t, `^n1\s+alive\s+0\.8s\s+1\.2\.0\s+3\s+no\s+yes\s+http://a:1$`, lines[1])
	assert.Regexp(t, `^n2 \*\s+fenced\s+1\.2s\s+1\.2\.0\s+0\s+yes\s+yes`, lines[2])
	assert.Regexp(t, `^n3\s+dead\s+42\.0s\s+1\.1\.0\s+0\s+no\s+no`, lines[3])
}

func TestClusterStatus_JSONIsTheAPIsAnswer(t *testing.T) {
	out, err := run(t, "-o", "json")
	require.NoError(t, err)
	var st clustercmd.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	assert.Equal(t, "n2", st.Node)
	require.Len(t, st.Nodes, 3)
	assert.Equal(t, 3, st.Nodes[0].AgentsHeld)
	assert.True(t, st.Nodes[1].Fenced)
	assert.True(t, st.Nodes[1].ThisNode)
	require.NotNil(t, st.Nodes[2].Reachable)
	assert.False(t, *st.Nodes[2].Reachable)
}

func TestClusterStatus_TakesNoArguments(t *testing.T) {
	_, err := run(t, "extra")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unknown command")
}
