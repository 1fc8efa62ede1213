package support_test

import (
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

// The gated commands say, before any call, that no ops token is configured:
// the server's 403 rightly does not say which factor failed.
func TestGatedCommands_SayNoOpsTokenBeforeCalling(t *testing.T) {
	var calls atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":{"code":"forbidden","message":"remote support is not available to this caller"}}`))
	}))
	defer api.Close()
	bundle := filepath.Join(t.TempDir(), "hf.bundle")
	require.NoError(t, os.WriteFile(bundle, []byte("x"), 0o600))

	for name, args := range map[string][]string{
		"activate": {"support", "activate", "--tenant", "acme", "--agent", "0b6c1f1e-0000-4000-8000-000000000001", "--reason", "INC-1"},
		"ping":     {"support", "ping", "--session", "5f0c1f1e-0000-4000-8000-000000000001"},
		"tail-log": {"support", "tail-log", "--session", "5f0c1f1e-0000-4000-8000-000000000001", "--log", "streamer"},
		"patch":    {"support", "patch", "--session", "5f0c1f1e-0000-4000-8000-000000000001", bundle},
	} {
		t.Run(name, func(t *testing.T) {
			calls.Store(0)
			t.Setenv("ARGUSCTL_CONFIG", "")
			t.Setenv("ARGUSCTL_OPS_TOKEN", "")
			t.Setenv("XDG_CONFIG_HOME", t.TempDir())
			io, _, _, _ := iostreams.Test()
			cmd, _ := root.NewCmdRoot(io)
			cmd.SetArgs(append(args, "--server", api.URL, "--token", "tok"))
			err := cmd.Execute()
			require.Error(t, err)
			assert.Contains(t, err.Error(), "no ops token: set ARGUSCTL_OPS_TOKEN or --ops-token")
			assert.Zero(t, calls.Load(), "no request is sent without an ops token")
		})
	}
}
