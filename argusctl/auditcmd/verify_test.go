package auditcmd_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

func verify(t *testing.T, body string) string {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "/v1/audit/verify", r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}))
	defer api.Close()
	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"audit", "verify", "--server", api.URL, "--token", "tok"})
	require.NoError(t, cmd.Execute())
	return out.String()
}

func TestVerify_AWindowWithNothingSaysSo(t *testing.T) {
	out := verify(t, `{"from":"2001-01-01T00:00:00Z","to":"2001-01-02T00:00:00Z","audit_rows":0,"events":0,"mismatches":[],"clean":true}`)
	assert.Contains(t, out, "no audited actions in this window")

	out = verify(t, `{"from":"2001-01-01T00:00:00Z","to":"2001-01-02T00:00:00Z","audit_rows":2,"events":2,"mismatches":[],"clean":true}`)
	assert.NotContains(t, out, "no audited actions")
}
