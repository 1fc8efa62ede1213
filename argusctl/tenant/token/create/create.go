// Package create is `argusctl tenant token create`.
package create

import (
	"context"
	"fmt"
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

	Tenant      string
	Rights      []string
	Description string
}

// Token is the API's answer: the token itself is in it once.
type Token struct {
	ID          string    `json:"id"`
	TenantID    string    `json:"tenant_id"`
	Rights      []string  `json:"rights"`
	Description string    `json:"description,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	Token       string    `json:"token"`
}

// NewCmdCreate builds the command; runF replaces the run step in tests.
func NewCmdCreate(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	cmd := &cobra.Command{
		Use:   "create TENANT",
		Short: "Mint a tenant token with rights and print it, once",
		Long: `Mint a tenant token and print it, alone, on standard output (-o json: with
its id and rights). It is shown once and stored only as a hash. Hand the
tenant the page address it prints: the token travels in the URL fragment,
which the browser never sends to a server.

Rights: view (always granted), end, approve.`,
		Example: `  argusctl tenant token create acme --rights view,end --description "security officer"
  argusctl tenant token create acme -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Tenant = args[0]
			for i, r := range opts.Rights {
				opts.Rights[i] = strings.TrimSpace(r)
			}
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringSliceVar(&opts.Rights, "rights", []string{"view"}, "rights to grant: view, end, approve (comma-separated)")
	cmd.Flags().StringVar(&opts.Description, "description", "", "who or what the token is for")
	return cmd
}

// Run mints the token and prints it.
func Run(ctx context.Context, opts *Options) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	body := map[string]any{"rights": opts.Rights}
	if opts.Description != "" {
		body["description"] = opts.Description
	}
	var t Token
	if err := c.Do(ctx, "POST", "/v1/tenants/"+url.PathEscape(opts.Tenant)+"/tokens", body, &t); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, t)
	}
	fmt.Fprintln(opts.IO.Out, t.Token)
	fmt.Fprintf(opts.IO.ErrOut, "tenant token %s for %s with rights %s; shown once. Open %s/status/#token=<token>\n",
		t.ID, opts.Tenant, strings.Join(t.Rights, ","), c.BaseURL)
	return nil
}
