// Package token is `argusctl operator token`: mint, list and revoke an
// operator's bearer tokens (operator:admin).
package token

import (
	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/operator/token/create"
	"github.com/argus-remote/argus/argusctl/operator/token/list"
	"github.com/argus-remote/argus/argusctl/operator/token/revoke"
)

// NewCmdToken builds `argusctl operator token`.
func NewCmdToken(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint, list and revoke an operator's tokens (scope operator:admin)",
		Long: `Mint, list and revoke an operator's bearer tokens. A lost token is replaced
by minting a new one and revoking the old; a revoked token is refused from
the moment the revocation returns, and any monitor connection it opened is
dropped. With no operator:admin token at hand, 'argus-server operator token
create --name NAME' mints one directly in the database.`,
	}
	cmd.AddCommand(create.NewCmdCreate(f, nil), list.NewCmdList(f, nil), revoke.NewCmdRevoke(f, nil))
	return cmd
}
