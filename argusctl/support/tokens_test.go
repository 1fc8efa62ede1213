package support_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sessionAPI answers with a fixed status and body for every request.
func sessionAPI(t *testing.T, status int, body string) *httptest.Server {
	t.Helper()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(api.Close)
	return api
}

const (
	endedSession  = `{"id":"` + sessionID + `","tenant":"acme","agent_name":"cam-gw-1","active":false,"ended_at":"2026-12-02T07:00:00Z","end_reason":"expired"}`
	activeSession = `{"id":"` + sessionID + `","tenant":"acme","agent_name":"cam-gw-1","active":true}`
)

// Once argusctl learns a session has ended, by any command's answer, the
// session's kept token is removed; while it is live, it stays.
func TestSupport_EndedSessionsTokenIsRemoved(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		args   []string
		fails  bool
	}{
		{"ping answered session_ended", http.StatusConflict, `{"error":{"code":"session_ended","message":"the session has ended"}}`,
			[]string{"support", "ping", "--session", sessionID}, true},
		{"tail-log answered session_expired", http.StatusConflict, `{"error":{"code":"session_expired","message":"the session has expired"}}`,
			[]string{"support", "tail-log", "--session", sessionID}, true},
		{"patch answered session_ended", http.StatusConflict, `{"error":{"code":"session_ended","message":"the session has ended"}}`,
			[]string{"support", "patch", "--session", sessionID, "BUNDLE"}, true},
		{"deactivate answered session_ended", http.StatusConflict, `{"error":{"code":"session_ended","message":"the session has already ended"}}`,
			[]string{"support", "deactivate", sessionID}, true},
		{"show sees it ended", http.StatusOK, endedSession, []string{"support", "show", sessionID}, false},
		{"list sees it ended", http.StatusOK, `{"sessions":[` + endedSession + `]}`, []string{"support", "list"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tokenFile := withSessionToken(t)
			bundle := t.TempDir() + "/hf.bundle"
			require.NoError(t, os.WriteFile(bundle, []byte("bundle"), 0o600))
			for i, a := range tc.args {
				if a == "BUNDLE" {
					tc.args[i] = bundle
				}
			}
			api := sessionAPI(t, tc.status, tc.body)
			_, _, err := runArgusctl(t, append(tc.args, "--server", api.URL, "--token", "t", "--ops-token", "o")...)
			if tc.fails {
				require.Error(t, err)
			} else {
				require.NoError(t, err)
			}
			assert.NoFileExists(t, tokenFile)
		})
	}
}

func TestSupport_LiveSessionsTokenStays(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		args       []string
	}{
		{"show", activeSession, []string{"support", "show", sessionID}},
		{"list", `{"sessions":[` + activeSession + `]}`, []string{"support", "list"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tokenFile := withSessionToken(t)
			api := sessionAPI(t, http.StatusOK, tc.body)
			_, _, err := runArgusctl(t, append(tc.args, "--server", api.URL, "--token", "t")...)
			require.NoError(t, err)
			assert.FileExists(t, tokenFile)
		})
	}
	t.Run("other refusals", func(t *testing.T) {
		tokenFile := withSessionToken(t)
		api := sessionAPI(t, http.StatusForbidden, `{"error":{"code":"forbidden","message":"forbidden"}}`)
		_, _, err := runArgusctl(t, "support", "ping", "--session", sessionID, "--server", api.URL, "--token", "t", "--ops-token", "o")
		require.Error(t, err)
		assert.FileExists(t, tokenFile)
	})
}

// Listing sessions needs no kept token, nor the sessions directory.
func TestSupportList_NeedsNoTokenFiles(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := sessionAPI(t, http.StatusOK, `{"sessions":[`+activeSession+`,`+endedSession+`]}`)
	stdout, _, err := runArgusctl(t, "support", "list", "--server", api.URL, "--token", "t")
	require.NoError(t, err)
	assert.Contains(t, stdout, sessionID)
}
