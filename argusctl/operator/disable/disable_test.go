package disable_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

func TestCmd_PostsTheOperatorsRoute(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "POST /v1/operators/bob/disable", r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"operator":"bob","disabled":true}`))
	}))
	defer api.Close()
	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"operator", "disable", "bob", "--server", api.URL, "--token", "tok"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, "operator bob disabled\n", out.String())
}
