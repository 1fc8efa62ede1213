// Package cli is argus-agent's command line.
package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/internal/cmdtree"
	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/patch"
)

// Version is the agent's version, set at build time with -ldflags.
var Version = "dev"

// DefaultConfigFile is the configuration file read when neither --config
// nor ARGUS_AGENT_CONFIG names one. Empty (no file) in a development
// build; the Debian package's build sets /etc/argus/agent.yaml with
// -ldflags, so an installed agent and the admin's commands read the file
// the package installed.
var DefaultConfigFile = ""

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
	pf.String("config", DefaultConfigFile, "YAML configuration file (env ARGUS_AGENT_CONFIG)")
	pf.String("state-dir", agent.DefaultStateDir(), "state directory: enrollment credentials and applied patches")
	pf.String("log-level", "info", "log level: debug, info, warn, error")

	root.AddCommand(newVersionCmd(io), newConfigCmd(io), newEnrollCmd(io), newRunCmd(io), newKillSwitchCmd(io), newStatusCmd(io))
	cmdtree.RefuseUnknownSubcommands(root)
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
// tenant can check a file before the agent runs with it. The allowlists
// come first and in full: they are what the tenant agrees operators may
// reach.
func newConfigCmd(io IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "check-config",
		Short: "Validate the configuration and print the effective settings and allowlists",
		Long: `Validate the configuration as 'run' would (an invalid value stops it, naming
the key) and print what the agent would run with: first what operators may
reach in a remote-support session (logs, readable roots, cameras, patch
keys and roots, the patch health check), then the other settings.`,
		Example: `  argus-agent check-config --config /etc/argus/agent.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			printConfig(io.Out, cfg)
			return nil
		},
	}
}

func printConfig(w io.Writer, cfg agent.Config) {
	named := func(title string, m map[string]string, show func(string) string) {
		if len(m) == 0 {
			fmt.Fprintf(w, "%s: none\n", title)
			return
		}
		fmt.Fprintf(w, "%s:\n", title)
		for _, name := range slices.Sorted(maps.Keys(m)) {
			fmt.Fprintf(w, "  %s: %s\n", name, show(m[name]))
		}
	}
	same := func(s string) string { return s }

	// Where the enrollment secret is: a packaged agent takes it from
	// /etc/argus/agent.yaml, an admin's shell from its own default.
	fmt.Fprintf(w, "state-dir: %s\n", cfg.StateDir)
	if cfg.RemoteSupportDisabled {
		fmt.Fprintln(w, "remote-support-disabled: true (every activation is refused; the allowlists below are not used)")
	} else {
		fmt.Fprintln(w, "remote-support-disabled: false")
	}
	fmt.Fprintln(w, "# What an operator may reach during a remote-support session, and nothing else:")
	named("log-files (tail_log)", cfg.LogFiles, same)
	if len(cfg.ReadableRoots) == 0 {
		fmt.Fprintln(w, "readable-roots (read_file): none")
	} else {
		fmt.Fprintln(w, "readable-roots (read_file):")
		for _, r := range cfg.ReadableRoots {
			fmt.Fprintf(w, "  %s\n", r)
		}
	}
	named("cameras (camera_view)", cfg.Cameras, agent.RedactSource)
	if len(cfg.PatchKeys) == 0 {
		fmt.Fprintln(w, "patch-keys (apply_patch trusts bundles signed by): none")
	} else {
		fmt.Fprintln(w, "patch-keys (apply_patch trusts bundles signed by):")
		for i, k := range cfg.PatchKeys {
			fmt.Fprintf(w, "  %s (key %s)\n", cfg.PatchKeyFiles[i], patch.KeyID(k))
		}
	}
	named("patch-roots (apply_patch may write below)", cfg.PatchRoots, same)
	if len(cfg.PatchHealthCheck) == 0 {
		fmt.Fprintln(w, "patch-health-check: none")
	} else {
		fmt.Fprintf(w, "patch-health-check: %s (timeout %s)\n", strings.Join(cfg.PatchHealthCheck, " "), cfg.PatchHealthTimeout)
	}
	fmt.Fprintln(w, "# The agent itself:")
	fmt.Fprintf(w, "state-dir: %s\nheartbeat-interval: %s\nreconnect-max-backoff: %s\nca-file: %s\nlog-level: %s\n",
		cfg.StateDir, cfg.HeartbeatInterval, cfg.ReconnectMax, cfg.CAFile, cfg.LogLevel)
	if len(cfg.BrokerURLs) == 0 {
		fmt.Fprintln(w, "broker-urls: the enrollment's broker URL")
	} else {
		fmt.Fprintf(w, "broker-urls: %s (tried in random order)\n", strings.Join(cfg.BrokerURLs, ", "))
	}
	fmt.Fprintf(w, "ffmpeg-path: %s\ncamera-timeout: %s\nstreaming-agent-version-file: %s\notlp-endpoint: %s\n",
		cfg.FFmpegPath, cfg.CameraTimeout, cfg.StreamingAgentVersionFile, cfg.OTLPEndpoint)
}
