package cli_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/argus-remote/argus/server/cli"
)

// A mistyped subcommand of a parent fails naming it, with a suggestion,
// before any of the flags meant for the intended command are judged.
func TestServerCLI_UnknownSubcommandFails(t *testing.T) {
	for _, tc := range []struct {
		args             []string
		word, path, hint string
	}{
		{[]string{"operator", "creat", "--name", "admin"}, "creat", "argus-server operator", "create"},
		{[]string{"operator", "token", "craete", "--name", "admin"}, "craete", "argus-server operator token", "create"},
		{[]string{"audit", "reconcil", "--since", "24h"}, "reconcil", "argus-server audit", "reconcile"},
		{[]string{"signing-key", "rotat"}, "rotat", "argus-server signing-key", "rotate"},
	} {
		t.Run(tc.word, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := cli.Execute(tc.args, cli.IOStreams{Out: &out, ErrOut: &errOut})
			assert.Equal(t, 1, code)
			assert.Contains(t, errOut.String(), `unknown command "`+tc.word+`" for "`+tc.path+`"`)
			assert.Contains(t, errOut.String(), "Did you mean this?\n\t"+tc.hint)
			assert.NotContains(t, out.String(), "Usage:")
		})
	}
}
