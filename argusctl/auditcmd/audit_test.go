package auditcmd_test

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

const entries = `{"entries":[
 {"id":"a1","occurred_at":"2026-12-01T10:00:00Z","actor":"operator:alice","action":"support.gate.denied","outcome":"denied",
  "client_ip":"10.1.2.3","detail":{"failed_factors":["operator_network","ops_token"],"method":"POST","path":"/v1/support/sessions","peer":"10.1.2.3"}},
 {"id":"a2","occurred_at":"2026-12-01T10:01:00Z","actor":"operator:alice","action":"support.activate","outcome":"denied",
  "reason":"INC-1","detail":{"code":"tenant_not_armed","tenant":"acme","ttl":"30m0s"}},
 {"id":"a3","occurred_at":"2026-12-01T10:02:00Z","actor":"operator:alice","action":"support.command.completed","outcome":"success",
  "session_id":"5f0c","detail":{"command":"tail_log","command_id":"c1","status":"ok","code":"","duration":"12ms","result_bytes":2048}}
]}`

func listCmd(t *testing.T, extra ...string) (string, error) {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "/v1/audit", r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(entries))
	}))
	t.Cleanup(api.Close)
	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(append([]string{"audit", "list", "--server", api.URL, "--token", "tok"}, extra...))
	err := cmd.Execute()
	return out.String(), err
}

func TestAuditList_JSONCarriesEachEntrysDetail(t *testing.T) {
	out, err := listCmd(t, "-o", "json")
	require.NoError(t, err)
	var got struct {
		Entries []struct {
			ID       string         `json:"id"`
			ClientIP string         `json:"client_ip"`
			Detail   map[string]any `json:"detail"`
		} `json:"entries"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	require.Len(t, got.Entries, 3)
	assert.Equal(t, []any{"operator_network", "ops_token"}, got.Entries[0].Detail["failed_factors"])
	assert.Equal(t, "10.1.2.3", got.Entries[0].ClientIP)
	assert.Equal(t, "tenant_not_armed", got.Entries[1].Detail["code"])
	assert.Equal(t, "tail_log", got.Entries[2].Detail["command"])
	assert.EqualValues(t, 2048, got.Entries[2].Detail["result_bytes"])
}

func TestAuditList_TableShowsAShortDetail(t *testing.T) {
	out, err := listCmd(t)
	require.NoError(t, err)
	assert.Contains(t, out, "DETAIL")
	assert.Contains(t, out, "failed_factors=operator_network,ops_token")
	assert.Contains(t, out, "code=tenant_not_armed")
	assert.Contains(t, out, "command=tail_log status=ok")
	// An empty value is left out of the short form.
	assert.NotContains(t, out, "code= ")
}
