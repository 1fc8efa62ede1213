// Package cli is argus-server's command line: serve, operator bootstrap
// and version, with settings from flags, environment and a YAML file.
package cli

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/internal/cmdtree"
	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/server"
)

// Version is the server's version, set at build time with -ldflags.
var Version = "dev"

// DefaultConfigFile is the configuration file read when neither --config
// nor ARGUS_CONFIG names one: empty in a development build, and
// /etc/argus/server.yaml (set with -ldflags) in the Debian package's.
var DefaultConfigFile = ""

// IOStreams are where a command reads and writes; tests substitute buffers.
type IOStreams struct {
	Out    io.Writer
	ErrOut io.Writer
}

// NewRootCmd builds the argus-server command tree.
func NewRootCmd(io IOStreams) *cobra.Command {
	root := &cobra.Command{
		Use:           "argus-server",
		Short:         "ARGUS remote support server: embedded MQTT broker, control-plane API and store",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(io.Out)
	root.SetErr(io.ErrOut)
	pf := root.PersistentFlags()
	pf.String("config", DefaultConfigFile, "YAML configuration file (env ARGUS_CONFIG)")
	pf.String("data-dir", server.DefaultDataDir(), "data directory; holds the private PostgreSQL cluster when no database URL is set")
	pf.String("database-url", "", "PostgreSQL URL; when empty a private cluster runs in the data directory")
	pf.String("log-level", "info", "log level: debug, info, warn, error")
	pf.String("log-format", "text", "log format: text or json")

	root.AddCommand(newServeCmd(io), newOperatorCmd(io), newAuditCmd(io), newSigningKeyCmd(io), newVersionCmd(io))
	cmdtree.RefuseUnknownSubcommands(root)
	return root
}

// Execute runs the command line and returns the process exit code.
func Execute(args []string, io IOStreams) int {
	root := NewRootCmd(io)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(io.ErrOut, "argus-server:", err)
		return 1
	}
	return 0
}

// loadConfig reads the configuration for cmd: defaults, then the YAML
// file, then the environment, then cmd's flags.
func loadConfig(cmd *cobra.Command) (server.Config, *slog.Logger, error) {
	cfg, err := settings.ForCommand(cmd.Flags(), "ARGUS_CONFIG", server.Keys, server.FromViper)
	if err != nil {
		return server.Config{}, nil, err
	}
	return cfg, newLogger(cmd.ErrOrStderr(), cfg), nil
}

// openDatabase loads the configuration and opens its database for the
// commands that work on the record directly, without the API. A data
// directory without an ARGUS database is refused, never created.
func openDatabase(cmd *cobra.Command) (server.Config, *server.Database, error) {
	cfg, log, err := loadConfig(cmd)
	if err != nil {
		return server.Config{}, nil, err
	}
	db, err := server.OpenDatabase(cmd.Context(), cfg, log, false)
	if err != nil {
		return server.Config{}, nil, err
	}
	return cfg, db, nil
}

func newLogger(w io.Writer, cfg server.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(telemetry.LogHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(telemetry.LogHandler(slog.NewTextHandler(w, opts)))
}

func newVersionCmd(io IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(io.Out, "argus-server", Version)
		},
	}
}
