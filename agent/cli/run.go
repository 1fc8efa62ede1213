package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/internal/telemetry"
)

func newRunCmd(io IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Connect out to the broker and wait, dormant, for a signed activation",
		Long: `Connect out to the ARGUS broker over MQTT-over-WebSocket and stay dormant:
send heartbeats and an advisory capability manifest, refuse every command
unless a current, signed activation is in force. The agent never listens on
any port.`,
		Example: `  argus-agent run --state-dir /var/lib/argus-agent --config /etc/argus/agent.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			st, err := agent.LoadState(cfg.StateDir)
			if err != nil {
				return err
			}
			log := slog.New(telemetry.LogHandler(slog.NewTextHandler(io.ErrOut, &slog.HandlerOptions{Level: cfg.LogLevel})))
			agent.Version = Version
			tel, err := telemetry.Setup(cmd.Context(), telemetry.Options{Service: "argus-agent", Version: Version, OTLPEndpoint: cfg.OTLPEndpoint})
			if err != nil {
				return err
			}
			defer tel.Shutdown(context.Background())
			a, err := agent.New(cfg, st, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	cmd.Flags().String("heartbeat-interval", "30s", "how often to send a heartbeat")
	cmd.Flags().String("reconnect-max-backoff", "60s", "longest wait between reconnection attempts")
	return cmd
}

func newEnrollCmd(io IOStreams) *cobra.Command {
	var server, token string
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Exchange a one-time enrollment token for this agent's identity",
		Long: `Exchange a one-time enrollment token (from 'argusctl agent enroll') for this
agent's id, secret, broker URL and the control plane's signing key, and
store them in the state directory (mode 0600). One HTTP call; no operator
credentials needed.`,
		Example: `  argus-agent enroll --server https://argus.example.net --token argus_enr_... --state-dir /var/lib/argus-agent`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			st, err := agent.Enroll(cmd.Context(), server, token, cfg.StateDir, nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(io.Out, "enrolled as agent %s (%s) of tenant %s; broker %s\nstate stored in %s\n",
				st.AgentID, st.AgentName, st.Tenant, st.BrokerURL, cfg.StateDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "control-plane API URL (required)")
	cmd.Flags().StringVar(&token, "token", "", "one-time enrollment token (required)")
	_ = cmd.MarkFlagRequired("server")
	_ = cmd.MarkFlagRequired("token")
	return cmd
}
