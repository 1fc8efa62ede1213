// Package tenant is `argusctl tenant`: create, list and show tenants.
package tenant

import (
	"context"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/tenant/token"
)

// NewCmdTenant builds `argusctl tenant`.
func NewCmdTenant(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Manage tenants, their consent and arm state",
	}
	cmd.AddCommand(newCmdCreate(f), newCmdList(f), newCmdShow(f), newCmdConsent(f), newCmdArm(f), newCmdDisarm(f), newCmdViewerToken(f), token.NewCmdToken(f), newCmdApproval(f))
	return cmd
}

func newCmdCreate(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "create NAME",
		Short:   "Create a tenant",
		Example: `  argusctl tenant create acme`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var t apiclient.Tenant
			if err := c.Do(cmd.Context(), "POST", "/v1/tenants", map[string]string{"name": args[0]}, &t); err != nil {
				return err
			}
			return printTenants(f, []apiclient.Tenant{t}, t)
		},
	}
}

func newCmdList(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List tenants",
		Example: `  argusctl tenant list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var res struct {
				Tenants []apiclient.Tenant `json:"tenants"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/tenants", nil, &res); err != nil {
				return err
			}
			return printTenants(f, res.Tenants, res)
		},
	}
}

func newCmdShow(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "show TENANT",
		Short:   "Show a tenant, its consent and arm state",
		Example: `  argusctl tenant show acme`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := Get(cmd.Context(), f, args[0])
			if err != nil {
				return err
			}
			return printTenants(f, []apiclient.Tenant{t}, t)
		},
	}
}

// Get fetches one tenant by name or id.
func Get(ctx context.Context, f *cmdutil.Factory, ref string) (apiclient.Tenant, error) {
	c, err := f.APIClient()
	if err != nil {
		return apiclient.Tenant{}, err
	}
	var t apiclient.Tenant
	err = c.Do(ctx, "GET", "/v1/tenants/"+url.PathEscape(ref), nil, &t)
	return t, err
}

func printTenants(f *cmdutil.Factory, list []apiclient.Tenant, asJSON any) error {
	if f.Output() == "json" {
		return cmdutil.PrintJSON(f.IOStreams, asJSON)
	}
	t := cmdutil.NewTable(f.IOStreams, "NAME", "ID", "CONSENT", "ARMED", "AGENTS", "CREATED")
	for _, x := range list {
		consent := "no"
		if c := x.ConsentInForce; c != nil {
			consent = c.DocumentID + " (" + c.SignedBy + ")"
		}
		armed := "no"
		if x.Armed {
			armed = "since " + cmdutil.Time(x.ArmedAt) + ": " + x.ArmReason
		}
		t.Row(x.Name, x.ID, consent, armed, fmt.Sprint(x.Agents), cmdutil.Time(&x.CreatedAt))
	}
	return t.Flush()
}
