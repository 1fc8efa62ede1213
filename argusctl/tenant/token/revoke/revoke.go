// Package revoke is `argusctl tenant token revoke`.
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

	Tenant  string
	TokenID string
}

// NewCmdRevoke builds the command; runF replaces the run step in tests.
func NewCmdRevoke(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	return &cobra.Command{
		Use:   "revoke TENANT TOKEN-ID",
		Short: "Revoke one of a tenant's tokens",
		Long: `Revoke one of a tenant's tokens, by the id 'argusctl tenant token list'
shows. It is refused from the moment this returns, and the page connections
it opened are dropped; the tenant's other tokens are untouched. Revoking
twice is not an error.`,
		Example: `  argusctl tenant token revoke acme 3q7cm2xk4v5b6n7m`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Tenant, opts.TokenID = args[0], args[1]
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
	path := "/v1/tenants/" + url.PathEscape(opts.Tenant) + "/tokens/" + url.PathEscape(opts.TokenID) + "/revoke"
	if err := c.Do(ctx, "POST", path, nil, &res); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, res)
	}
	fmt.Fprintf(opts.IO.Out, "tenant token %s of %s revoked\n", opts.TokenID, opts.Tenant)
	return nil
}
