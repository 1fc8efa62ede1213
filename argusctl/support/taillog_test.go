package support_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

const sessionID = "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"

// withSessionToken points argusctl's config directory at a temporary one
// holding a kept token for sessionID, and returns the token file.
func withSessionToken(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", dir)
	p := filepath.Join(dir, "argusctl", "sessions", sessionID+".token")
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
	require.NoError(t, os.WriteFile(p, []byte("argus_sst_x\n"), 0o600))
	return p
}

func runArgusctl(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// commandAPI answers every session command with ok and records the
// arguments it was sent.
func commandAPI(t *testing.T, calls *atomic.Int32, seen chan<- map[string]any) *httptest.Server {
	t.Helper()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var b struct {
			Args map[string]any `json:"args"`
		}
		assert.NoError(t, json.NewDecoder(r.Body).Decode(&b))
		select {
		case seen <- b.Args:
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"command_id":"c1","status":"ok","data":{"lines":["a"]}}`))
	}))
	t.Cleanup(api.Close)
	return api
}

func TestTailLog_RefusesLinesOutsideTheRange(t *testing.T) {
	for _, n := range []string{"0", "-3", "5001"} {
		t.Run(n, func(t *testing.T) {
			withSessionToken(t)
			var calls atomic.Int32
			api := commandAPI(t, &calls, nil)
			_, _, err := runArgusctl(t, "support", "tail-log", "--server", api.URL, "--token", "t", "--ops-token", "o",
				"--session", sessionID, "--lines="+n)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "--lines "+n)
			assert.Contains(t, err.Error(), "1..5000")
			assert.Zero(t, calls.Load(), "nothing is sent")
		})
	}
}

func TestTailLog_SendsLinesOnlyWhenGiven(t *testing.T) {
	withSessionToken(t)
	var calls atomic.Int32
	seen := make(chan map[string]any, 1)
	api := commandAPI(t, &calls, seen)
	base := []string{"support", "tail-log", "--server", api.URL, "--token", "t", "--ops-token", "o", "--session", sessionID}
	stdout, _, err := runArgusctl(t, base...)
	require.NoError(t, err)
	assert.Equal(t, "a\n", stdout)
	assert.NotContains(t, <-seen, "lines", "the agent's default applies")

	_, _, err = runArgusctl(t, append(base, "--lines", "1")...)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"lines": float64(1)}, <-seen)
}
