// Package cli is argus-agent's command line.
package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/internal/settings"
)

// Version is the agent's version, set at build time with -ldflags.
var Version = "dev"

// IOStreams are where a command writes.
type IOStreams struct {
	Out    io.Writer
	ErrOut io.Writer
}

// NewRootCmd builds the argus-agent command tree.
func NewRootCmd(io IOStreams) *cobra.Command {
	root := &cobra.Command{
		Use:           "argus-agent",
		Short:         "ARGUS remote support agent: dials out, stays dormant until a signed activation",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(io.Out)
	root.SetErr(io.ErrOut)
	pf := root.PersistentFlags()
	pf.String("config", "", "YAML configuration file (env ARGUS_AGENT_CONFIG)")
	pf.String("state-dir", agent.DefaultStateDir(), "state directory: enrollment credentials and applied patches")
	pf.String("log-level", "info", "log level: debug, info, warn, error")

	root.AddCommand(newVersionCmd(io), newConfigCmd(io), newEnrollCmd(io), newRunCmd(io), newKillSwitchCmd(io), newStatusCmd(io))
	return root
}

// Execute runs the command line and returns the process exit code.
func Execute(args []string, io IOStreams) int {
	root := NewRootCmd(io)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(io.ErrOut, "argus-agent:", err)
		return 1
	}
	return 0
}

func loadConfig(cmd *cobra.Command) (agent.Config, error) {
	return settings.ForCommand(cmd.Flags(), "ARGUS_AGENT_CONFIG", agent.Keys, agent.ConfigFromViper)
}

func newVersionCmd(io IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(io.Out, "argus-agent", Version)
		},
	}
}

// newConfigCmd validates and prints the effective configuration, so a
// tenant can check a file before the agent runs with it.
func newConfigCmd(io IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:     "check-config",
		Short:   "Validate the configuration and print the effective settings",
		Example: `  argus-agent check-config --config /etc/argus/agent.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			fmt.Fprintf(io.Out, "state-dir: %s\nheartbeat-interval: %s\nca-file: %s\nlog-level: %s\n",
				cfg.StateDir, cfg.HeartbeatInterval, cfg.CAFile, cfg.LogLevel)
			return nil
		},
	}
}
