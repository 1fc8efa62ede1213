// Package whoami is the `argusctl whoami` command: which operator the
// configured token belongs to, and its scopes.
package whoami

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/iostreams"
)

// Options are the command's flags and dependencies.
type Options struct {
	IO      *iostreams.IOStreams
	Factory *cmdutil.Factory
}

// Principal is the API's answer.
type Principal struct {
	OperatorID   string    `json:"operator_id"`
	OperatorName string    `json:"operator"`
	TokenID      string    `json:"token_id"`
	Scopes       []string  `json:"scopes"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"`
}

// NewCmdWhoami builds `argusctl whoami`; runF replaces the run step in tests.
func NewCmdWhoami(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show the operator and scopes of the configured token",
		Example: `  argusctl whoami
  argusctl whoami -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
}

// Run asks the API who the token belongs to and prints it.
func Run(ctx context.Context, opts *Options) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	if c.Token == "" {
		return fmt.Errorf("no operator token: pass --token, set ARGUSCTL_TOKEN, or add token: to a profile in the config file")
	}
	var p Principal
	if err := c.Do(ctx, "GET", "/v1/whoami", nil, &p); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, p)
	}
	t := cmdutil.NewTable(opts.IO, "OPERATOR", "ID", "TOKEN", "SCOPES", "EXPIRES")
	expires := "never"
	if !p.ExpiresAt.IsZero() {
		expires = p.ExpiresAt.Format(time.RFC3339)
	}
	t.Row(p.OperatorName, p.OperatorID, p.TokenID, strings.Join(p.Scopes, ","), expires)
	return t.Flush()
}
