package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/testenv"
)

// The real binaries refuse a mistyped subcommand with exit 1, naming it
// and the command meant, even with flags after it; argusctl takes a
// server given as HOST:PORT and refuses --lines 0 before calling.
func TestCLI_ConsistencyWithTheRealBinaries(t *testing.T) {
	env := testenv.NewEnv(t)
	srv := env.StartServer(t, nil)
	token := env.Operator(t, "admin", "operator:admin", "tenant:admin")
	noConfig := []string{"ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + filepath.Join(testenv.TempDir(t), "cfg"), "ARGUSCTL_TOKEN=" + token,
		"ARGUSCTL_SERVER=" + srv.APIURL, "ARGUSCTL_OPS_TOKEN=ops"}

	for _, tc := range []struct {
		program string
		args    []string
		want    []string
	}{
		{"argusctl", []string{"tenant", "consents", "acme"}, []string{`unknown command "consents" for "argusctl tenant"`, "Did you mean this?\n\tconsent"}},
		{"argusctl", []string{"support", "pnig", "--session", "X"}, []string{`unknown command "pnig" for "argusctl support"`, "Did you mean this?\n\tping"}},
		{"argusctl", []string{"support", "tail-log", "--session", "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10", "--lines", "0"}, []string{"--lines 0", "1..5000"}},
		{"argusctl", []string{"whoami", "--server", "ftp://127.0.0.1:8080"}, []string{"http://HOST:PORT"}},
		{"argus-server", []string{"operator", "creat", "--name", "x"}, []string{`unknown command "creat" for "argus-server operator"`, "Did you mean this?\n\tcreate"}},
		{"argus-agent", []string{"kill-switch", "engag", "--reason", "x"}, []string{`unknown command "engag" for "argus-agent kill-switch"`, "Did you mean this?\n\tengage"}},
	} {
		t.Run(tc.program+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, err := testenv.Run(t, append(env.Vars(), noConfig...), tc.program, tc.args...)
			assert.Equal(t, 1, exitCode(err), "stderr: %s", stderr)
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
			assert.NotContains(t, stdout, "Usage:")
		})
	}

	t.Run("server as HOST:PORT", func(t *testing.T) {
		hostPort := strings.TrimPrefix(srv.APIURL, "http://")
		stdout, stderr, err := testenv.Run(t, noConfig, "argusctl", "whoami", "--server", hostPort, "-o", "json")
		require.NoError(t, err, stderr)
		assert.Contains(t, stdout, `"admin"`)
	})
}
