package support_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

func runTranscript(t *testing.T, handler http.HandlerFunc, extra ...string) (stdout, stderr string, err error) {
	t.Helper()
	api := httptest.NewServer(handler)
	t.Cleanup(api.Close)
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(append([]string{"support", "transcript", "--server", api.URL, "--token", "tok"}, extra...))
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestTranscript_WritesTheServersBytesAndSaysWhatTheyHold(t *testing.T) {
	const body = `{"format":"argus-transcript/1","session":{"id":"s1"},"first_seq":4,"last_seq":6,"actions":2,` +
		`"entries":[{"seq":4},{"seq":5},{"seq":6}],"signature":{"key_id":"k1"}}`
	var path string
	handler := func(w http.ResponseWriter, r *http.Request) {
		path = r.URL.EscapedPath()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}
	file := filepath.Join(t.TempDir(), "t.json")
	_, stderr, err := runTranscript(t, handler, "s1/../x", "--out", file)
	require.NoError(t, err)
	assert.Equal(t, "/v1/sessions/s1%2F..%2Fx/transcript", path, "the id stays one path segment")
	assert.Contains(t, stderr, "session s1: 2 actions in seq 4..6 (3 entries), signed by key k1, written to "+file)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.JSONEq(t, body, string(b))

	stdout, _, err := runTranscript(t, handler, "s1")
	require.NoError(t, err)
	assert.JSONEq(t, body, stdout, "without --out it goes to stdout")
}

func TestTranscript_ServerRefusalIsShown(t *testing.T) {
	_, _, err := runTranscript(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"session_not_found","message":"no such session"}}`))
	}, "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10")
	assert.ErrorContains(t, err, "no such session")
}
