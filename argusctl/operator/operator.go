// Package operator is `argusctl operator`: who can operate ARGUS, their
// tokens, and disabling them (operator:admin). First operators are made
// with `argus-server operator create`, which needs no API.
package operator

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/operator/disable"
	"github.com/argus-remote/argus/argusctl/operator/enable"
	"github.com/argus-remote/argus/argusctl/operator/token"
)

type operator struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	CreatedAt    time.Time  `json:"created_at"`
	DisabledAt   *time.Time `json:"disabled_at,omitempty"`
	ActiveTokens int        `json:"active_tokens"`
}

// NewCmdOperator builds `argusctl operator`.
func NewCmdOperator(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{Use: "operator", Short: "Operators and their tokens (scope operator:admin)"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "List operators and how many live tokens each holds",
		Example: `  argusctl operator list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var res struct {
				Operators []operator `json:"operators"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/operators", nil, &res); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			t := cmdutil.NewTable(f.IOStreams, "NAME", "ID", "LIVE TOKENS", "CREATED", "DISABLED")
			for _, o := range res.Operators {
				t.Row(o.Name, o.ID, fmt.Sprint(o.ActiveTokens), cmdutil.Time(&o.CreatedAt), cmdutil.Time(o.DisabledAt))
			}
			return t.Flush()
		},
	})
	cmd.AddCommand(token.NewCmdToken(f), disable.NewCmdDisable(f, nil), enable.NewCmdEnable(f, nil))
	return cmd
}
