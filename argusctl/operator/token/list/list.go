// Package list is `argusctl operator token list`.
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

	Operator string
}

// Token is one token as listed; never its secret.
type Token struct {
	ID          string     `json:"id"`
	Operator    string     `json:"operator"`
	Scopes      []string   `json:"scopes"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt  *time.Time `json:"last_used_at,omitempty"`
}

// State says whether a token still works at now.
func (t Token) State(now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return "revoked"
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return "expired"
	}
	return "live"
}

// NewCmdList builds the command; runF replaces the run step in tests.
func NewCmdList(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IOStreams, Factory: f}
	return &cobra.Command{
		Use:   "list OPERATOR",
		Short: "List an operator's tokens, live or not",
		Example: `  argusctl operator token list alice
  argusctl operator token list alice -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Operator = args[0]
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
	if err := c.Do(ctx, "GET", "/v1/operators/"+url.PathEscape(opts.Operator)+"/tokens", nil, &res); err != nil {
		return err
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, res)
	}
	now := time.Now()
	t := cmdutil.NewTable(opts.IO, "ID", "STATE", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "DESCRIPTION")
	for _, tok := range res.Tokens {
		t.Row(tok.ID, tok.State(now), strings.Join(tok.Scopes, ","), cmdutil.Time(&tok.CreatedAt), cmdutil.Time(tok.ExpiresAt),
			cmdutil.Time(tok.LastUsedAt), tok.Description)
	}
	return t.Flush()
}
