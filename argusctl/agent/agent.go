// Package agent is `argusctl agent`: enrollment tokens, listing, showing
// and revoking agents (scope agent:admin).
package agent

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// NewCmdAgent builds `argusctl agent`.
func NewCmdAgent(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Enroll, list, show and revoke agents (scope agent:admin)",
	}
	cmd.AddCommand(newCmdEnroll(f), newCmdList(f), newCmdShow(f), newCmdRevoke(f))
	return cmd
}

func newCmdEnroll(f *cmdutil.Factory) *cobra.Command {
	var tenant, name string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Mint a one-time enrollment token for a new agent",
		Long: `Mint a one-time enrollment token for an agent named NAME in TENANT. The token
is printed once; give it to the tenant, who runs on the host:

  argus-agent enroll --server URL --token TOKEN`,
		Example: `  argusctl agent enroll --tenant acme --name cam-gw-1
  argusctl agent enroll --tenant acme --name cam-gw-2 --ttl 1h -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			req := map[string]string{"tenant": tenant, "name": name}
			if ttl > 0 {
				req["ttl"] = ttl.String()
			}
			var tok apiclient.EnrollmentToken
			if err := c.Do(cmd.Context(), "POST", "/v1/enrollment-tokens", req, &tok); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, tok)
			}
			fmt.Fprintln(f.IOStreams.Out, tok.Token)
			fmt.Fprintf(f.IOStreams.ErrOut, "one-time token for agent %s of tenant %s, valid until %s; shown once.\non the tenant host: argus-agent enroll --server %s --token <token>\n",
				tok.AgentName, tok.Tenant, tok.ExpiresAt.UTC().Format(time.RFC3339), c.BaseURL)
			return nil
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "tenant name or id (required)")
	cmd.Flags().StringVar(&name, "name", "", "agent name (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "token lifetime (default 24h, at most 168h)")
	_ = cmd.MarkFlagRequired("tenant")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func newCmdList(f *cmdutil.Factory) *cobra.Command {
	var tenant string
	var stale time.Duration
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List agents with their online state",
		Example: `  argusctl agent list --tenant acme
  argusctl agent list --stale 720h     # live enrollments not seen for 30 days`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			q := url.Values{}
			if tenant != "" {
				q.Set("tenant", tenant)
			}
			if stale > 0 {
				q.Set("stale", stale.String())
			}
			var res struct {
				Agents []apiclient.Agent `json:"agents"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/agents?"+q.Encode(), nil, &res); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			now := time.Now()
			t := cmdutil.NewTable(f.IOStreams, "TENANT", "NAME", "ID", "ONLINE", "LAST SEEN", "VERSION", "REVOKED")
			for _, a := range res.Agents {
				t.Row(a.Tenant, a.Name, a.ID, online(a), cmdutil.Ago(a.LastSeenAt, now), dash(a.Version), cmdutil.Time(a.RevokedAt))
			}
			return t.Flush()
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant (name or id)")
	cmd.Flags().DurationVar(&stale, "stale", 0, "only live agents offline and not seen for this long")
	return cmd
}

func newCmdShow(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "show AGENT",
		Short:   "Show an agent, its presence and its latest (advisory) manifest",
		Example: `  argusctl agent show 0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var a apiclient.Agent
			if err := c.Do(cmd.Context(), "GET", "/v1/agents/"+url.PathEscape(args[0]), nil, &a); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, a)
			}
			out := f.IOStreams.Out
			fmt.Fprintf(out, "agent:      %s (%s)\ntenant:     %s\nonline:     %s\nlast seen:  %s\nversion:    %s\nenrolled:   %s\nrevoked:    %s %s\n",
				a.Name, a.ID, a.Tenant, online(a), cmdutil.Ago(a.LastSeenAt, time.Now()), dash(a.Version),
				cmdutil.Time(&a.EnrolledAt), cmdutil.Time(a.RevokedAt), a.RevokeReason)
			if len(a.Manifest) > 0 {
				fmt.Fprintf(out, "manifest (advisory, %s):\n  %s\n", cmdutil.Time(a.ManifestAt), strings.TrimSpace(string(a.Manifest)))
			}
			if len(a.Capabilities) > 0 {
				fmt.Fprintf(out, "capabilities (advisory, %s):\n  %s\n", cmdutil.Time(a.CapabilitiesAt), strings.TrimSpace(string(a.Capabilities)))
			}
			return nil
		},
	}
}

func newCmdRevoke(f *cmdutil.Factory) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "revoke AGENT",
		Short:   "Revoke an agent: its credential stops working and it is disconnected at once",
		Example: `  argusctl agent revoke 0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10 --reason "host decommissioned"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why the agent is revoked")
			}
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var a apiclient.Agent
			if err := c.Do(cmd.Context(), "POST", "/v1/agents/"+url.PathEscape(args[0])+"/revoke", map[string]string{"reason": reason}, &a); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, a)
			}
			fmt.Fprintf(f.IOStreams.Out, "revoked agent %s (%s) of tenant %s\n", a.Name, a.ID, a.Tenant)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; audited)")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// online says whether an agent is connected, and whether it is silent
// there (stale: two heartbeats missed).
func online(a apiclient.Agent) string {
	if a.Online && a.Stale {
		return "stale"
	}
	return cmdutil.YesNo(a.Online)
}
