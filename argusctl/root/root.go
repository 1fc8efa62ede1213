// Package root builds the argusctl command tree.
package root

import (
	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/agent"
	"github.com/argus-remote/argus/argusctl/auditcmd"
	"github.com/argus-remote/argus/argusctl/clustercmd"
	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/config"
	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/operator"
	"github.com/argus-remote/argus/argusctl/patchcmd"
	"github.com/argus-remote/argus/argusctl/support"
	"github.com/argus-remote/argus/argusctl/tenant"
	"github.com/argus-remote/argus/argusctl/version"
	"github.com/argus-remote/argus/argusctl/whoami"
	"github.com/argus-remote/argus/internal/cmdtree"
)

// NewCmdRoot builds argusctl with its global flags. The Factory's Config
// reads those flags once they are parsed.
func NewCmdRoot(io *iostreams.IOStreams) (*cobra.Command, *cmdutil.Factory) {
	cmd := &cobra.Command{
		Use:   "argusctl",
		Short: "Operate ARGUS remote support",
		Long: `argusctl talks to the ARGUS control-plane API: tenants, consent, agents,
support sessions and audit.

Settings come from flags, then ARGUSCTL_* environment variables, then the
selected profile of ~/.config/argusctl/config.yaml.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetOut(io.Out)
	cmd.SetErr(io.ErrOut)
	pf := cmd.PersistentFlags()
	pf.String("config", "", "config file (env ARGUSCTL_CONFIG; default ~/.config/argusctl/config.yaml)")
	pf.String("profile", "", "profile in the config file (env ARGUSCTL_PROFILE)")
	pf.String("server", "", "control-plane API URL, http(s)://HOST:PORT; a bare HOST:PORT means http:// (env ARGUSCTL_SERVER; default "+config.DefaultServer+")")
	pf.String("token", "", "operator bearer token (env ARGUSCTL_TOKEN)")
	pf.String("ops-token", "", "second-factor ops token for support commands (env ARGUSCTL_OPS_TOKEN)")
	pf.StringP("output", "o", "", "output format: table or json (env ARGUSCTL_OUTPUT)")

	f := &cmdutil.Factory{IOStreams: io}
	var cached *config.Config
	f.Config = func() (*config.Config, error) {
		if cached != nil {
			return cached, nil
		}
		c, err := config.Load(cmd.PersistentFlags())
		if err != nil {
			return nil, err
		}
		cached = c
		return c, nil
	}
	// Resolve the configuration before any command runs, so a bad file or
	// flag fails first and the same way for every command.
	cmd.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if cmdtree.IsGroup(cmd) {
			return nil // only prints its help
		}
		_, err := f.Config()
		return err
	}

	cmd.AddCommand(
		version.NewCmdVersion(f),
		whoami.NewCmdWhoami(f, nil),
		tenant.NewCmdTenant(f),
		agent.NewCmdAgent(f),
		support.NewCmdSupport(f),
		auditcmd.NewCmdAudit(f),
		patchcmd.NewCmdPatch(f),
		operator.NewCmdOperator(f),
		clustercmd.NewCmdCluster(f),
	)
	cmdtree.RefuseUnknownSubcommands(cmd)
	return cmd, f
}
