// Package revoke is `argusctl operator token revoke`.
package revoke

import (
	"context"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/iostreams"
)

// Options are the command's flags and dependencies.
type Options struct {
	IO      *iostreams.IOStreams
	Factory *cmdutil.Factory

	Operator string
	TokenID  string
}

// NewCmdRevoke builds the command; runF replaces the run step in tests.
func NewCmdRevoke(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	return &cobra.Command{
		Use:   "revoke OPERATOR TOKEN-ID",
		Short: "Revoke one of an operator's tokens",
		Long: `Revoke one of an operator's tokens, by the id 'argusctl operator token list'
shows. It is refused from the moment this returns, and a monitor connected
with it is disconnected. Revoking twice is not an error.`,
		Example: `  argusctl operator token revoke alice 3q7cm2x...`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Operator, opts.TokenID = args[0], args[1]
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
}

// Run revokes the token.
func Run(ctx context.Context, opts *Options) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	var res map[string]string
	path := "/v1/operators/" + url.PathEscape(opts.Operator) + "/tokens/" + url.PathEscape(opts.TokenID) + "/revoke"
	if err := c.Do(ctx, "POST", path, nil, &res); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, res)
	}
	fmt.Fprintf(opts.IO.Out, "token %s of %s revoked\n", opts.TokenID, opts.Operator)
	return nil
}
