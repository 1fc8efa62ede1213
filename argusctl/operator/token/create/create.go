// Package create is `argusctl operator token create`.
package create

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/iostreams"
)

// Options are the command's flags and dependencies.
type Options struct {
	IO      *iostreams.IOStreams
	Factory *cmdutil.Factory

	Operator    string
	Scopes      []string
	Description string
	// ExpiresIn is the token's lifetime; zero means it does not expire.
	ExpiresIn time.Duration
}

// Token is the API's answer: the token itself is in it once.
type Token struct {
	ID          string     `json:"id"`
	Operator    string     `json:"operator"`
	Scopes      []string   `json:"scopes"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	Token       string     `json:"token"`
}

// NewCmdCreate builds the command; runF replaces the run step in tests.
func NewCmdCreate(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	cmd := &cobra.Command{
		Use:   "create OPERATOR",
		Short: "Mint a token for an existing operator and print it, once",
		Long: `Mint a bearer token for an existing operator and print it, alone, on
standard output (-o json: the token with its id, scopes and expiry). It is
shown once and stored only as a hash. This is how a lost token is replaced:
mint a new one, then revoke the old with 'argusctl operator token revoke'.

Scopes: remote_support, tenant:arm, tenant:admin, agent:admin, audit:read,
operator:admin, monitor.`,
		Example: `  argusctl operator token create alice --scope remote_support --expires-in 720h
  argusctl operator token create grafana --scope monitor --description "dashboards" -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Operator = args[0]
			if opts.ExpiresIn < 0 || (cmd.Flags().Changed("expires-in") && opts.ExpiresIn == 0) {
				return errors.New("--expires-in must be positive (like 720h); leave it out for a token that does not expire")
			}
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.Scopes, "scope", nil, "scope to grant (repeatable, required)")
	cmd.Flags().StringVar(&opts.Description, "description", "", "what the token is for")
	cmd.Flags().DurationVar(&opts.ExpiresIn, "expires-in", 0, "token lifetime (like 720h); left out, it does not expire")
	_ = cmd.MarkFlagRequired("scope")
	return cmd
}

// Run mints the token and prints it.
func Run(ctx context.Context, opts *Options) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	body := map[string]any{"scopes": opts.Scopes}
	if opts.Description != "" {
		body["description"] = opts.Description
	}
	if opts.ExpiresIn > 0 {
		body["expires_in"] = opts.ExpiresIn.String()
	}
	var t Token
	if err := c.Do(ctx, "POST", "/v1/operators/"+url.PathEscape(opts.Operator)+"/tokens", body, &t); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, t)
	}
	fmt.Fprintln(opts.IO.Out, t.Token)
	expires := "never"
	if t.ExpiresAt != nil {
		expires = t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(opts.IO.ErrOut, "token %s for %s with scopes %v, expires %s; the token above is shown once\n", t.ID, t.Operator, t.Scopes, expires)
	return nil
}
