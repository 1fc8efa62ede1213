package root_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

func execute(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// A mistyped subcommand under any parent (or the root) fails naming the
// word and suggesting the command meant, even when flags follow it that
// only the intended command knows.
func TestRoot_UnknownSubcommandFailsWithASuggestion(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		word, path string
		suggestion string
	}{
		{[]string{"tenant", "consents", "acme"}, "consents", "argusctl tenant", "consent"},
		{[]string{"support", "pnig", "--session", "X"}, "pnig", "argusctl support", "ping"},
		{[]string{"support", "pnig", "--session=X", "--lines", "3"}, "pnig", "argusctl support", "ping"},
		{[]string{"tenant", "consent", "recrod", "acme", "--document-id", "D"}, "recrod", "argusctl tenant consent", "record"},
		{[]string{"operator", "token", "lsit", "admin"}, "lsit", "argusctl operator token", "list"},
		{[]string{"pnig", "--session", "X"}, "pnig", "argusctl", ""},
		{[]string{"completion", "bsah"}, "bsah", "argusctl completion", "bash"},
	} {
		t.Run(tc.word, func(t *testing.T) {
			stdout, _, err := execute(t, tc.args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), `unknown command "`+tc.word+`" for "`+tc.path+`"`)
			if tc.suggestion != "" {
				assert.Contains(t, err.Error(), "Did you mean this?\n\t"+tc.suggestion)
			}
			assert.NotContains(t, err.Error(), "unknown flag")
			assert.NotContains(t, stdout, "Usage:", "no help on stdout")
		})
	}
}

// A parent with nothing after it still prints its help and succeeds, and
// an unknown flag with no unknown command before it is still reported as
// the unknown flag.
func TestRoot_ParentWithoutSubcommand(t *testing.T) {
	stdout, _, err := execute(t, "tenant")
	require.NoError(t, err)
	assert.Contains(t, stdout, "Available Commands:")

	_, _, err = execute(t, "support", "--bogus")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unknown flag: --bogus")
}
