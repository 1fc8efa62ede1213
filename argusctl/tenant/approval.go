package tenant

import (
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// approvalSetting is a tenant's approval mode as the API shows it.
type approvalSetting struct {
	TenantID string `json:"tenant_id"`
	Tenant   string `json:"tenant"`
	Mode     string `json:"mode"`
	Timeout  string `json:"timeout"`
}

// Bounds of --timeout, as the server holds them: checked here first so a
// typo costs no round trip.
const (
	minApprovalTimeout = 5 * time.Second
	maxApprovalTimeout = time.Hour
)

func newCmdApproval(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "approval",
		Short: "Whether the tenant must approve each activation before it opens",
	}
	cmd.AddCommand(newCmdApprovalSet(f), newCmdApprovalShow(f))
	return cmd
}

func newCmdApprovalSet(f *cmdutil.Factory) *cobra.Command {
	var mode string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "set TENANT --mode required|off [--timeout 10m]",
		Short: "Set the tenant's approval mode (scope tenant:admin; audited)",
		Long: `In mode required, an activation that passes every other gate waits until a
tenant token with the approve right approves or denies it on the tenant's page,
or until the timeout (5s to 1h; default 10m) passes. No operator scope skips
it. Mode off opens sessions without asking, as before.`,
		Example: `  argusctl tenant approval set acme --mode required --timeout 10m
  argusctl tenant approval set acme --mode off`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if mode != "required" && mode != "off" {
				return fmt.Errorf("--mode %q: give --mode required or --mode off", mode)
			}
			body := map[string]string{"mode": mode}
			if cmd.Flags().Changed("timeout") {
				if timeout < minApprovalTimeout || timeout > maxApprovalTimeout {
					return fmt.Errorf("--timeout %v: give a duration from %v to %v (like 10m)", timeout, minApprovalTimeout, maxApprovalTimeout)
				}
				body["timeout"] = timeout.String()
			}
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var set approvalSetting
			if err := c.Do(cmd.Context(), "POST", "/v1/tenants/"+url.PathEscape(args[0])+"/approval", body, &set); err != nil {
				return err
			}
			return printApproval(f, set)
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "required or off (required)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long an activation waits for a decision, 5s to 1h (left out: kept; new tenants 10m)")
	_ = cmd.MarkFlagRequired("mode")
	return cmd
}

func newCmdApprovalShow(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "show TENANT",
		Short:   "Show the tenant's approval mode and timeout",
		Example: `  argusctl tenant approval show acme`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var set approvalSetting
			if err := c.Do(cmd.Context(), "GET", "/v1/tenants/"+url.PathEscape(args[0])+"/approval", nil, &set); err != nil {
				return err
			}
			return printApproval(f, set)
		},
	}
}

func printApproval(f *cmdutil.Factory, set approvalSetting) error {
	if f.Output() == "json" {
		return cmdutil.PrintJSON(f.IOStreams, set)
	}
	_, err := fmt.Fprintf(f.IOStreams.Out, "tenant:   %s\napproval: %s\ntimeout:  %s\n", set.Tenant, set.Mode, set.Timeout)
	return err
}
