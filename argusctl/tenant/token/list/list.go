// Package list is `argusctl tenant token list`.
package list

import (
	"context"
	"net/url"
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

	Tenant string
}

// Token is one token as listed; never its secret.
type Token struct {
	ID          string     `json:"id"`
	TenantID    string     `json:"tenant_id"`
	Rights      []string   `json:"rights"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
}

// NewCmdList builds the command; runF replaces the run step in tests.
func NewCmdList(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	return &cobra.Command{
		Use:   "list TENANT",
		Short: "List a tenant's tokens and their rights, live or revoked",
		Example: `  argusctl tenant token list acme
  argusctl tenant token list acme -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Tenant = args[0]
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
}

// Run lists the tokens.
func Run(ctx context.Context, opts *Options) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	var res struct {
		Tokens []Token `json:"tokens"`
	}
	if err := c.Do(ctx, "GET", "/v1/tenants/"+url.PathEscape(opts.Tenant)+"/tokens", nil, &res); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, res)
	}
	t := cmdutil.NewTable(opts.IO, "ID", "RIGHTS", "DESCRIPTION", "CREATED", "REVOKED")
	for _, v := range res.Tokens {
		t.Row(v.ID, strings.Join(v.Rights, ","), v.Description, cmdutil.Time(&v.CreatedAt), cmdutil.Time(v.RevokedAt))
	}
	return t.Flush()
}
