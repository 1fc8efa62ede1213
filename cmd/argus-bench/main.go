// Command argus-bench measures ARGUS remote support: idle agents held over
// MQTT-over-WebSocket, audited command round trips through the 3-factor
// gate, activation latency, and reconnection after a server restart. It
// starts a real argus-server and drives it with real agents; with
// --against mosquitto it measures Debian's Mosquitto the same way, side by
// side.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/internal/bench"
)

func main() {
	// The harness's own profile, to tell its cost from the server's
	// (ARGUS_BENCH_PPROF profiles the server).
	if addr := os.Getenv("ARGUS_BENCH_SELF_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
	// The harness holds thousands of agents on the cores the server is
	// measured on; collecting its garbage less often leaves them more of
	// those cores. Only this process: the server keeps the default.
	debug.SetGCPercent(400)
	var (
		serverBin string
		asJSON    bool
	)
	root := &cobra.Command{
		Use:           "argus-bench",
		Short:         "Measure argus-server with real agents, beside Mosquitto",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&serverBin, "server-bin", "", "argus-server binary (default: beside this one, else on PATH)")
	root.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	bin := func() (string, error) {
		if serverBin != "" {
			return serverBin, nil
		}
		if self, err := os.Executable(); err == nil {
			p := filepath.Join(filepath.Dir(self), "argus-server")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
		return exec.LookPath("argus-server")
	}
	emit := func(v any, rows [][2]string) error {
		if asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "machine\t%d CPUs, %s/%s, %s\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
		}
		return tw.Flush()
	}
	checkAgainst := func(a string) error {
		if a != "" && a != "mosquitto" {
			return fmt.Errorf("--against: only mosquitto")
		}
		return nil
	}

	var (
		agents, sources int
		hold            time.Duration
		reconnect       bool
		against         string
	)
	idle := &cobra.Command{
		Use:     "idle",
		Short:   "Connect N agents and measure the server holding them (and, with --reconnect, their return after a restart)",
		Example: `  argus-bench idle --agents 10000 --sources 250 --reconnect --against mosquitto`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAgainst(against); err != nil {
				return err
			}
			b, err := bin()
			if err != nil {
				return err
			}
			r, err := bench.Idle(cmd.Context(), b, agents, sources, hold, reconnect)
			if err != nil {
				return err
			}
			if against == "" {
				return emit(r, idleRows(r))
			}
			bare, err := bench.IdleAgainst(cmd.Context(), b, agents, sources)
			if err != nil {
				return err
			}
			if asJSON {
				return emit(map[string]any{"agents": r, "bare_clients": bare}, nil)
			}
			if err := emit(nil, idleRows(r)); err != nil {
				return err
			}
			fmt.Println()
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "bare idle clients\tclients\tconnects/s\tRSS per connection\tvs mosquitto")
			ref := bare[len(bare)-1].RSSPerConnKiB
			for _, x := range bare {
				fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.1f KiB\t%.2fx\n", x.Broker, x.Clients, x.ConnectRate, x.RSSPerConnKiB, x.RSSPerConnKiB/ref)
			}
			return tw.Flush()
		},
	}
	idle.Flags().IntVar(&agents, "agents", 1000, "how many agents")
	idle.Flags().IntVar(&sources, "sources", 250, "loopback source addresses (127.0.0.1..N)")
	idle.Flags().DurationVar(&hold, "hold", 0, "hold them this long, then count")
	idle.Flags().BoolVar(&reconnect, "reconnect", false, "then kill and restart the server and time their return")
	idle.Flags().StringVar(&against, "against", "", "also measure bare idle clients here and on mosquitto, side by side")

	var (
		seq, window, acts int
		dur               time.Duration
		rttAgainst        string
	)
	rtt := &cobra.Command{
		Use:     "rtt",
		Short:   "Audited ping round trips through the API and gate, and activation latency",
		Example: `  argus-bench rtt --sequential 1000 --window 64 --duration 10s --against mosquitto`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAgainst(rttAgainst); err != nil {
				return err
			}
			b, err := bin()
			if err != nil {
				return err
			}
			r, err := bench.RTT(cmd.Context(), b, seq, window, dur, acts)
			if err != nil {
				return err
			}
			q := func(x bench.Quantiles) string {
				return fmt.Sprintf("p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms (n=%d)", x.P50, x.P90, x.P99, x.Max, x.N)
			}
			rows := [][2]string{
				{"audited ping, sequential", q(r.Sequential)},
				{fmt.Sprintf("audited ping, %d in flight", r.Window), fmt.Sprintf("%.0f commands/s; %s", r.Throughput, q(r.Concurrent))},
				{"activation", q(r.Activate)},
			}
			var bare map[string]bench.Quantiles
			if rttAgainst != "" {
				if bare, err = bench.EchoAgainst(cmd.Context(), seq); err != nil {
					return err
				}
				names := make([]string, 0, len(bare))
				for n := range bare {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					rows = append(rows, [2]string{"bare request/response, " + n, q(bare[n])})
				}
			}
			return emit(map[string]any{"api": r, "bare_request_response": bare}, rows)
		},
	}
	rtt.Flags().IntVar(&seq, "sequential", 1000, "sequential pings (and bare request/responses)")
	rtt.Flags().IntVar(&window, "window", 64, "commands in flight for the concurrent run")
	rtt.Flags().DurationVar(&dur, "duration", 10*time.Second, "length of the concurrent run")
	rtt.Flags().IntVar(&acts, "activations", 200, "activations to time")
	rtt.Flags().StringVar(&rttAgainst, "against", "", "also measure bare MQTT request/response on this project's broker and on mosquitto")

	var (
		nodes, clAgents, clSources, clPings, perProcess int
		clHold                                          time.Duration
		clKill, clRolling, clAnyNode                    bool
		clSessions                                      int
		clProfileDir                                    string
	)
	cl := &cobra.Command{
		Use:   "cluster",
		Short: "Hold agents on a cluster of N nodes, time pings within and across nodes, and kill a node",
		Example: `  argus-bench cluster --nodes 3 --agents 3000 --kill
  argus-bench cluster --nodes 5 --agents 15000 --sources 250 --hold 5m
  argus-bench cluster --nodes 3 --agents 30000 --rolling`,
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bin()
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			r, err := bench.ClusterRun(cmd.Context(), b, bench.ClusterOptions{
				Nodes: nodes, Agents: clAgents, Sources: clSources, Hold: clHold, Pings: clPings, Kill: clKill,
				Rolling: clRolling, AnyNode: clAnyNode, Sessions: clSessions, Self: self, PerProcess: perProcess,
				ProfileDir: clProfileDir,
			})
			if err != nil {
				return err
			}
			return emit(r, clusterRows(r))
		},
	}
	cl.Flags().IntVar(&nodes, "nodes", 3, "how many server processes")
	cl.Flags().IntVar(&clAgents, "agents", 3000, "how many agents, spread round robin over the nodes")
	cl.Flags().IntVar(&clSources, "sources", 250, "loopback source addresses (127.0.0.1..N)")
	cl.Flags().IntVar(&clPings, "pings", 1000, "sequential audited pings, same node and across nodes")
	cl.Flags().DurationVar(&clHold, "hold", 0, "hold the agents this long before measuring")
	cl.Flags().IntVar(&perProcess, "agents-per-process", bench.DefaultAgentsPerProcess, "agents per harness process (each a descriptor; mind the per-process limit)")
	cl.Flags().BoolVar(&clKill, "kill", false, "then SIGKILL the last node and time its agents' and its sessions' return")
	cl.Flags().BoolVar(&clRolling, "rolling", false, "then drain and restart each node in turn under audited pings")
	cl.Flags().BoolVar(&clAnyNode, "any-node", false, "give every agent every node's URL (implied by --kill and --rolling)")
	cl.Flags().StringVar(&clProfileDir, "profile-dir", "", "write CPU profiles of every node, taken during each run of pings, here")
	cl.Flags().IntVar(&clSessions, "sessions", 10, "live sessions kept through --kill (on the killed node's agents) or --rolling")

	var (
		holdStates              string
		holdSources, holdOffset int
		holdBrokers             []string
	)
	holdAgents := &cobra.Command{
		Use:    "hold-agents",
		Short:  "Connect the agents in a states file and hold them (a cluster run's child process)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return bench.HoldAgents(ctx, holdStates, holdSources, holdOffset, holdBrokers, os.Stdout)
		},
	}
	holdAgents.Flags().StringVar(&holdStates, "states", "", "JSON file of agent states")
	holdAgents.Flags().IntVar(&holdSources, "sources", 250, "loopback source addresses")
	holdAgents.Flags().IntVar(&holdOffset, "source-offset", 0, "the first source address's index")
	holdAgents.Flags().StringSliceVar(&holdBrokers, "broker-urls", nil, "every agent's broker URLs (default: each state's own)")

	root.AddCommand(idle, rtt, cl, holdAgents)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "argus-bench:", err)
		os.Exit(1)
	}
}

func clusterRows(r bench.ClusterResult) [][2]string {
	q := func(x bench.Quantiles) string {
		return fmt.Sprintf("p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms (n=%d)", x.P50, x.P90, x.P99, x.Max, x.N)
	}
	spread := "agent i on node i mod N"
	if r.AnyNode {
		spread = "every agent given every node's URL"
	}
	rows := [][2]string{
		{"cluster", fmt.Sprintf("%d nodes, one PostgreSQL, embedded NATS with routes", r.Nodes)},
		{"agents", fmt.Sprintf("%d, %d source addresses per harness process (this one's fd limit %d), %s", r.Agents, r.Sources, r.FDLimit, spread)},
		{"connect rate", fmt.Sprintf("%.0f agents/s", r.ConnectRate)},
		{"connected after hold", fmt.Sprintf("%d of %d (held %s)", r.ConnectedAtEnd, r.Agents, r.HeldFor)},
	}
	for i, p := range r.Processes {
		rows = append(rows, [2]string{fmt.Sprintf("harness process %d", i+1), fmt.Sprintf("%d agents (fd limit %d)", p.Agents, p.FDLimit)})
	}
	for _, n := range r.PerNode {
		rows = append(rows, [2]string{fmt.Sprintf("node %d", n.Node),
			fmt.Sprintf("%d agents, RSS %.1f MiB (baseline %.1f), %.1f KiB per agent, %d fds open", n.Agents, n.RSSMiB, n.RSSBaselineMiB, n.RSSPerAgentKiB, n.FDs)})
	}
	if r.SameNodePing.N > 0 {
		rows = append(rows, [2]string{"audited ping, same node", q(r.SameNodePing)})
	}
	if r.CrossNodePing.N > 0 {
		rows = append(rows, [2]string{"audited ping, across nodes", q(r.CrossNodePing)})
	}
	if r.CrossNodeError != "" {
		rows = append(rows, [2]string{"audited ping, across nodes", "failed: " + r.CrossNodeError})
	}
	for _, c := range []struct {
		name string
		f    *bench.CPUFigures
	}{{"cpu, agents idle", r.IdleCPU}, {"cpu, same-node pings", r.SamePingCPU}, {"cpu, cross-node pings", r.CrossPingCPU}} {
		if c.f != nil {
			rows = append(rows, [2]string{c.name, cpuRow(*c.f)})
		}
	}
	if r.AllBackIn != "" {
		rows = append(rows, [2]string{"node killed", fmt.Sprintf("%d agents back on the others in %s; its %d sessions all answered after %s; sessions ended: %d",
			r.KilledAgents, r.AllBackIn, r.KilledSessions, r.SessionBackIn, r.SessionsEnded)})
	}
	if rf := r.Rolling; rf != nil {
		for _, st := range rf.Steps {
			rows = append(rows, [2]string{"rolling restart", st})
		}
		rows = append(rows, [2]string{"rolling restart total", fmt.Sprintf("%s; %d audited pings, %d failed %v; sessions ended: %d",
			rf.Total, rf.Commands, rf.Failed, rf.Errors, r.SessionsEnded)})
	}
	return rows
}

// cpuRow says, in cores, where the machine's went.
func cpuRow(f bench.CPUFigures) string {
	nodes := make([]string, len(f.Nodes))
	for i, c := range f.Nodes {
		nodes[i] = fmt.Sprintf("%.2f", c)
	}
	return fmt.Sprintf("%.2f of %d cores busy over %s: nodes %s, harness %.2f, the rest (PostgreSQL, the system) %.2f",
		f.Machine, f.Cores, f.Window, strings.Join(nodes, " "), f.Harness, f.Rest)
}

func idleRows(r bench.IdleResult) [][2]string {
	rows := [][2]string{
		{"agents", fmt.Sprintf("%d from %d source addresses (fd limit %d)", r.Agents, r.Sources, r.FDLimit)},
		{"connect rate", fmt.Sprintf("%.0f agents/s", r.ConnectRate)},
		{"connect p50 / p99", fmt.Sprintf("%.1f ms / %.1f ms", r.Connect.P50, r.Connect.P99)},
		{"server RSS", fmt.Sprintf("%.1f MiB (baseline %.1f MiB)", r.RSSMiB, r.RSSBaselineMiB)},
		{"RSS per idle agent, 10 s after connecting", fmt.Sprintf("%.1f KiB", r.RSSPerAgentKiB)},
		{"goroutines / heap in use", fmt.Sprintf("%.0f / %.1f MiB", r.Goroutines, r.HeapInuseMiB)},
		{"connected after " + r.HeldFor, fmt.Sprintf("%.0f", r.ConnectedAtEnd)},
	}
	if r.SettledRSSMiB > 0 {
		rows = append(rows,
			[2]string{"settled: server RSS", fmt.Sprintf("%.1f MiB (heap %.1f MiB, stacks %.1f MiB)", r.SettledRSSMiB, r.SettledHeapInuseMiB, r.SettledStackInuseMiB)},
			[2]string{"settled: RSS per idle agent", fmt.Sprintf("%.1f KiB", r.SettledRSSPerAgentKiB)})
	} else {
		rows = append(rows, [2]string{"settled: RSS per idle agent", "not measured (no GC during the hold; hold 2m30s or more)"})
	}
	if r.ReconnectAllIn != "" {
		rows = append(rows, [2]string{"all back after restart", r.ReconnectAllIn})
	}
	return rows
}
