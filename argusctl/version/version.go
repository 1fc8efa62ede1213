// Package version is the `argusctl version` command.
package version

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// Version is argusctl's version, set at build time with -ldflags.
var Version = "dev"

// NewCmdVersion builds `argusctl version`.
func NewCmdVersion(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print argusctl's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, map[string]string{"version": Version})
			}
			_, err := fmt.Fprintln(f.IOStreams.Out, "argusctl", Version)
			return err
		},
	}
}
