package tenant

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/cmdutil"
)

func newCmdConsent(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "consent",
		Short: "Record, withdraw and list a tenant's signed remote-support consent (scope tenant:admin)",
	}
	cmd.AddCommand(newCmdConsentRecord(f), newCmdConsentWithdraw(f), newCmdConsentList(f))
	return cmd
}

func newCmdConsentRecord(f *cmdutil.Factory) *cobra.Command {
	var doc, by, at string
	cmd := &cobra.Command{
		Use:     "record TENANT",
		Short:   "Record the tenant's signed remote-support clause",
		Example: `  argusctl tenant consent record acme --document-id DOC-2026-0042 --signed-by "Jane Roe, CISO" --signed-at 2026-11-20`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			body := map[string]string{"document_id": doc, "signed_by": by}
			if at != "" {
				body["signed_at"] = at
			}
			var t apiclient.Tenant
			if err := c.Do(cmd.Context(), "POST", "/v1/tenants/"+url.PathEscape(args[0])+"/consent", body, &t); err != nil {
				return err
			}
			return printTenants(f, []apiclient.Tenant{t}, t)
		},
	}
	cmd.Flags().StringVar(&doc, "document-id", "", "id of the signed document (required)")
	cmd.Flags().StringVar(&by, "signed-by", "", "who signed it for the tenant (required)")
	cmd.Flags().StringVar(&at, "signed-at", "", "when it was signed (2026-01-31 or RFC 3339; default now)")
	_ = cmd.MarkFlagRequired("document-id")
	_ = cmd.MarkFlagRequired("signed-by")
	return cmd
}

func newCmdConsentWithdraw(f *cmdutil.Factory) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "withdraw TENANT",
		Short:   "Withdraw the tenant's consent: disarms it and ends its live sessions",
		Example: `  argusctl tenant consent withdraw acme --reason "contract ended"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return postReason(cmd, f, "/v1/tenants/"+url.PathEscape(args[0])+"/consent/withdraw", reason)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; audited)")
	return cmd
}

func newCmdConsentList(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "list TENANT",
		Short:   "Show the tenant's consent history",
		Example: `  argusctl tenant consent list acme`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var res struct {
				Consents []apiclient.Consent `json:"consents"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/tenants/"+url.PathEscape(args[0])+"/consents", nil, &res); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			t := cmdutil.NewTable(f.IOStreams, "DOCUMENT", "SIGNED BY", "SIGNED AT", "RECORDED", "WITHDRAWN", "WHY")
			for _, x := range res.Consents {
				t.Row(x.DocumentID, x.SignedBy, x.SignedAt.UTC().Format(time.RFC3339), x.RecordedAt.UTC().Format(time.RFC3339), cmdutil.Time(x.WithdrawnAt), x.WithdrawReason)
			}
			return t.Flush()
		},
	}
}

func newCmdArm(f *cmdutil.Factory) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "arm TENANT",
		Short: "Arm the tenant for remote support (scope tenant:arm; needs recorded consent)",
		Long: `Arming is the operator's assertion that the tenant's signed consent exists.
It needs the dedicated tenant:arm scope and a reason, and fails with
tenant_consent_required when no consent is recorded. There is no override.`,
		Example: `  argusctl tenant arm acme --reason "INC-2231: stream drops at site 4"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return postReason(cmd, f, "/v1/tenants/"+url.PathEscape(args[0])+"/arm", reason)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; audited)")
	return cmd
}

func newCmdDisarm(f *cmdutil.Factory) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "disarm TENANT",
		Short:   "Disarm the tenant; ends every live session of the tenant",
		Example: `  argusctl tenant disarm acme --reason "incident closed"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return postReason(cmd, f, "/v1/tenants/"+url.PathEscape(args[0])+"/disarm", reason)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; audited)")
	return cmd
}

func postReason(cmd *cobra.Command, f *cmdutil.Factory, path, reason string) error {
	if strings.TrimSpace(reason) == "" {
		return fmt.Errorf("--reason is required")
	}
	c, err := f.APIClient()
	if err != nil {
		return err
	}
	var t apiclient.Tenant
	if err := c.Do(cmd.Context(), "POST", path, map[string]string{"reason": reason}, &t); err != nil {
		return err
	}
	return printTenants(f, []apiclient.Tenant{t}, t)
}
