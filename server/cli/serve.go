package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/controlplane/api"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/heapfloor"
	"github.com/argus-remote/argus/server"
)

func newServeCmd(io IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the broker and the control-plane API",
		Long: `Run the embedded MQTT broker and the control-plane HTTP API.

With no database URL, a private PostgreSQL cluster is started from the
machine's server binaries in the data directory, and stopped on exit.
One serve at a time holds a data directory (serve.lock, with its PID); a
second on the same directory is refused.
Everything listens on loopback unless configured otherwise.`,
		Example: `  # Everything on loopback, private PostgreSQL under ~/.local/share/argus
  argus-server serve

  # Remote support on, operators from 10.20.0.0/16
  REMOTE_SUPPORT_ENABLED=true REMOTE_SUPPORT_OPERATOR_CIDRS=10.20.0.0/16 \
  ARGUS_OPS_TOKEN=$(openssl rand -hex 32) argus-server serve --config /etc/argus/server.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			api.Version = Version
			// One serve per data directory: a second would adopt this
			// one's PostgreSQL and stop it when it exits.
			if cfg.DataDir != "" {
				lock, err := server.LockDataDir(cfg.DataDir)
				if err != nil {
					return err
				}
				defer lock.Release()
			}
			if cfg.GCHeapFloor > 0 {
				heapfloor.Start(cfg.GCHeapFloor)
			}
			srv, err := server.Start(ctx, cfg, log)
			if err != nil {
				return err
			}
			firstOperatorHint(cmd.Context(), io, cfg, srv, log)
			waitErr := srv.Wait(ctx)
			stop()
			closeErr := srv.Close(context.WithoutCancel(ctx))
			if waitErr != nil {
				return waitErr
			}
			return closeErr
		},
	}
	f := cmd.Flags()
	f.String("http-addr", "127.0.0.1:8080", "control-plane API listen address")
	f.String("http-tls-cert", "", "API TLS certificate file (PEM)")
	f.String("http-tls-key", "", "API TLS key file (PEM)")
	f.String("mqtt-ws-addr", "127.0.0.1:8083", "MQTT-over-WebSocket listen address")
	f.String("mqtt-ws-path", "/mqtt", "MQTT-over-WebSocket HTTP path")
	f.String("mqtt-tls-cert", "", "broker TLS certificate file (PEM); serves wss://")
	f.String("mqtt-tls-key", "", "broker TLS key file (PEM)")
	f.Bool("remote-support-enabled", false, "allow support sessions (env REMOTE_SUPPORT_ENABLED)")
	f.StringSlice("remote-support-operator-cidrs", nil, "CIDRs operators may open sessions from (env REMOTE_SUPPORT_OPERATOR_CIDRS)")
	f.StringSlice("trusted-proxies", nil, "CIDRs of proxies whose X-Forwarded-For is believed")
	// A cluster node drains on SIGTERM; these bound each of its steps.
	f.String("cluster-drain-timeout", "30s", "on SIGTERM, a cluster node waits this long (0..10m) for its commands in flight before it sends their agents away (env ARGUS_CLUSTER_DRAIN_TIMEOUT)")
	f.String("cluster-drain-evict-rate", "2000", "a draining cluster node sends its agents away at this many a second (0: all at once), so the nodes they go to can take them in (env ARGUS_CLUSTER_DRAIN_EVICT_RATE)")
	f.String("cluster-drain-handover-timeout", "10s", "a draining cluster node, once it has sent its agents away, waits this long (0..5m) for the other nodes to record them (env ARGUS_CLUSTER_DRAIN_HANDOVER_TIMEOUT)")
	f.String("cluster-status-resync", "30s", "a cluster node sends the others again the retained status it published, a share at a time, once in this period (1s..10m), repairing a message lost on the way (env ARGUS_CLUSTER_STATUS_RESYNC)")
	f.String("cluster-drain-delay", "2s", "a draining cluster node keeps answering its API this long (0..1m) from the start of the drain, for the load balancer to see /readyz fail (env ARGUS_CLUSTER_DRAIN_DELAY)")
	return cmd
}

// firstOperatorCommand is the README's "First operator" command.
const firstOperatorCommand = "argus-server operator create --name admin --scope operator:admin --scope tenant:admin --scope agent:admin"

// firstOperatorHint says how to create a first operator, only while there
// is none, with the command as the README gives it, and what to add when
// this server does not use the default data directory.
func firstOperatorHint(ctx context.Context, io IOStreams, cfg server.Config, srv *server.Server, log *slog.Logger) {
	exists, err := operators.NewStore(srv.Database().Pool).Any(ctx)
	if err != nil {
		log.Warn("cannot tell whether an operator exists", "err", err)
		return
	}
	if exists {
		return
	}
	fmt.Fprintf(io.ErrOut, "\nNo operator exists yet. Create a first operator and its token (printed once) with:\n  %s\n", firstOperatorCommand)
	switch {
	case cfg.DatabaseURL != "":
		fmt.Fprintln(io.ErrOut, "(run it with the same ARGUS_DATABASE_URL or --database-url as this server)")
	case cfg.DataDir != server.DefaultDataDir():
		fmt.Fprintf(io.ErrOut, "(add --data-dir %s: this server does not use the default data directory)\n", cfg.DataDir)
	}
	fmt.Fprintln(io.ErrOut)
}
