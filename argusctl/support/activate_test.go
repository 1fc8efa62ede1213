package support_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

// activateAPI answers POST /v1/support/sessions with an open session and
// records the request bodies it saw.
func activateAPI(t *testing.T, calls *atomic.Int32, bodies chan<- map[string]string) *httptest.Server {
	t.Helper()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var b map[string]string
		assert.NoError(t, json.NewDecoder(r.Body).Decode(&b))
		select {
		case bodies <- b:
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"session":{"id":"0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10","agent_name":"cam-gw-1","tenant":"acme","expires_at":"2026-12-02T08:00:00Z"},"token":"argus_sst_x"}`))
	}))
	t.Cleanup(api.Close)
	return api
}

func runActivate(t *testing.T, url string, extra ...string) (stdout, stderr string, err error) {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	args := append([]string{"support", "activate", "--server", url, "--token", "tok", "--ops-token", "ops",
		"--tenant", "acme", "--agent", "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a11", "--reason", "INC-1"}, extra...)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestActivate_RefusesNonPositiveTTL(t *testing.T) {
	for _, ttl := range []string{"0s", "0", "-5m"} {
		t.Run(ttl, func(t *testing.T) {
			var calls atomic.Int32
			api := activateAPI(t, &calls, nil)
			_, _, err := runActivate(t, api.URL, "--ttl="+ttl)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "--ttl")
			assert.Contains(t, err.Error(), "positive")
			assert.Zero(t, calls.Load(), "no session is requested")
		})
	}
}

func TestActivate_SaysTheDefaultOnlyWithoutTTL(t *testing.T) {
	var calls atomic.Int32
	bodies := make(chan map[string]string, 1)
	api := activateAPI(t, &calls, bodies)
	_, stderr, err := runActivate(t, api.URL)
	require.NoError(t, err)
	assert.NotContains(t, <-bodies, "ttl", "the server's default applies")
	assert.Contains(t, stderr, "default 30m")

	_, stderr, err = runActivate(t, api.URL, "--ttl", "15m")
	require.NoError(t, err)
	assert.Equal(t, "15m0s", (<-bodies)["ttl"])
	assert.NotContains(t, stderr, "default")
}
