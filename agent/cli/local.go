package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/agent"
)

func newKillSwitchCmd(io IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kill-switch",
		Short: "Engage or release the tenant's kill switch for remote support",
		Long: `Engaging the kill switch ends any live remote-support session within a
second, tells the server why, and makes the agent refuse every activation
until it is released. It is a file in the state directory, so it holds
across restarts.`,
	}
	var reason string
	engage := &cobra.Command{
		Use:     "engage",
		Short:   "Engage the kill switch",
		Example: `  argus-agent kill-switch engage --state-dir /var/lib/argus-agent --reason "change freeze"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := agent.EngageKillSwitch(cfg.StateDir, reason); err != nil {
				return err
			}
			fmt.Fprintln(io.Out, "kill switch engaged: remote support refused until released")
			return nil
		},
	}
	engage.Flags().StringVar(&reason, "reason", "", "why (kept beside the switch)")
	release := &cobra.Command{
		Use:   "release",
		Short: "Release the kill switch",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := agent.ReleaseKillSwitch(cfg.StateDir); err != nil {
				return err
			}
			fmt.Fprintln(io.Out, "kill switch released")
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Say whether the kill switch is engaged",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if agent.KillSwitchEngaged(cfg.StateDir) {
				fmt.Fprintln(io.Out, "engaged")
			} else {
				fmt.Fprintln(io.Out, "released")
			}
			return nil
		},
	}
	cmd.AddCommand(engage, release, status)
	return cmd
}

func newStatusCmd(io IOStreams) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Show whether a remote-support session is active on this host",
		Example: `  argus-agent status --state-dir /var/lib/argus-agent`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			st, err := agent.ReadStatus(cfg.StateDir)
			if errors.Is(err, fs.ErrNotExist) {
				st = agent.Status{State: "dormant"}
			} else if err != nil {
				return err
			}
			st.KillSwitch = agent.KillSwitchEngaged(cfg.StateDir)
			if asJSON {
				enc := json.NewEncoder(io.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			if st.State == "active" {
				fmt.Fprintf(io.Out, "REMOTE SUPPORT ACTIVE\n  session:  %s\n  operator: %s\n  since:    %s\n  until:    %s\n",
					st.SessionID, st.Operator, st.Since.Format(time.RFC3339), st.ExpiresAt.Format(time.RFC3339))
			} else {
				fmt.Fprintln(io.Out, "dormant: no remote-support session")
			}
			if r := st.Refused; r != nil {
				fmt.Fprintf(io.Out, "enrollment refused or revoked: the broker has refused this agent's credentials since %s (%d attempts; %s)\n",
					r.Since.Format(time.RFC3339), r.Attempts, r.Reason)
				if !r.NextAttempt.IsZero() {
					fmt.Fprintf(io.Out, "  next attempt: %s\n", r.NextAttempt.Format(time.RFC3339))
				}
				fmt.Fprintf(io.Out, "  if it was revoked, enroll it again with a new token: argus-agent enroll --server URL --token TOKEN --state-dir %s\n", cfg.StateDir)
			}
			fmt.Fprintf(io.Out, "connected: %v\nkill switch: %v\n", st.Connected, st.KillSwitch)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
