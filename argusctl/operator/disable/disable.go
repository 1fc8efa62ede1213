// Package disable is `argusctl operator disable`.
package disable

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
}

// NewCmdDisable builds the command; runF replaces the run step in tests.
func NewCmdDisable(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	return &cobra.Command{
		Use:   "disable OPERATOR",
		Short: "Disable an operator (scope operator:admin)",
		Long: `Disable an operator: every one of its tokens is refused from the moment
this returns, and its monitor connections are dropped. Its tokens are kept;
'argusctl operator enable' makes them work again. No operator can disable
itself.`,
		Example: `  argusctl operator disable bob`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Operator = args[0]
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
}

// Run asks the API to disable the operator.
func Run(ctx context.Context, opts *Options) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	var res struct {
		Operator string `json:"operator"`
		Disabled bool   `json:"disabled"`
	}
	if err := c.Do(ctx, "POST", "/v1/operators/"+url.PathEscape(opts.Operator)+"/disable", nil, &res); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, res)
	}
	fmt.Fprintf(opts.IO.Out, "operator %s disabled\n", res.Operator)
	return nil
}
