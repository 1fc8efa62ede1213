// Package token is `argusctl tenant token`: mint, list and revoke the
// tokens a tenant uses on its status page (tenant:admin).
package token

import (
	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/tenant/token/create"
	"github.com/argus-remote/argus/argusctl/tenant/token/list"
	"github.com/argus-remote/argus/argusctl/tenant/token/revoke"
)

// NewCmdToken builds `argusctl tenant token`.
func NewCmdToken(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint, list and revoke a tenant's tokens and their rights (scope tenant:admin)",
		Long: `Mint, list and revoke the tokens a tenant opens its status page with
(/status/#token=...). Each carries rights: view (the indicator and the live
command feed; every token has it), end (end the tenant's sessions from the
page) and approve (decide activations that wait for approval). A token acts
on its own tenant only and never reaches an agent's commands. Revoking one
drops the page connections it opened at once, and no other.
'argusctl tenant viewer-token' is the view-only form of the same tokens.`,
	}
	cmd.AddCommand(create.NewCmdCreate(f, nil), list.NewCmdList(f, nil), revoke.NewCmdRevoke(f, nil))
	return cmd
}
