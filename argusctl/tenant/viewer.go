package tenant

import (
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
)

type viewerToken struct {
	ID          string     `json:"id"`
	TenantID    string     `json:"tenant_id"`
	Token       string     `json:"token,omitempty"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
}

func newCmdViewerToken(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "viewer-token",
		Short: "View-only tenant tokens (the same as 'argusctl tenant token create --rights view')",
	}
	var description string
	create := &cobra.Command{
		Use:     "create TENANT",
		Short:   "Mint a viewer token (printed once)",
		Example: `  argusctl tenant viewer-token create acme --description "NOC wall screen"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var v viewerToken
			if err := c.Do(cmd.Context(), "POST", "/v1/tenants/"+url.PathEscape(args[0])+"/viewer-tokens", map[string]string{"description": description}, &v); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, v)
			}
			fmt.Fprintln(f.IOStreams.Out, v.Token)
			fmt.Fprintf(f.IOStreams.ErrOut, "viewer token %s for tenant %s; shown once. Open %s/status/#token=<token>\n", v.ID, args[0], c.BaseURL)
			return nil
		},
	}
	create.Flags().StringVar(&description, "description", "", "what it is for")
	list := &cobra.Command{
		Use:   "list TENANT",
		Short: "List a tenant's viewer tokens",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var res struct {
				Tokens []viewerToken `json:"viewer_tokens"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/tenants/"+url.PathEscape(args[0])+"/viewer-tokens", nil, &res); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			t := cmdutil.NewTable(f.IOStreams, "ID", "DESCRIPTION", "CREATED", "REVOKED")
			for _, v := range res.Tokens {
				t.Row(v.ID, v.Description, cmdutil.Time(&v.CreatedAt), cmdutil.Time(v.RevokedAt))
			}
			return t.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke TENANT ID",
		Short: "Revoke a viewer token",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			if err := c.Do(cmd.Context(), "POST", "/v1/tenants/"+url.PathEscape(args[0])+"/viewer-tokens/"+url.PathEscape(args[1])+"/revoke", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(f.IOStreams.Out, "revoked viewer token %s\n", args[1])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
