// Package clustercmd is `argusctl cluster`: the cluster's nodes as the
// node asked sees them (scope monitor or operator:admin).
package clustercmd

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/iostreams"
)

// NewCmdCluster builds `argusctl cluster`.
func NewCmdCluster(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show the cluster's nodes (scope monitor or operator:admin)",
	}
	cmd.AddCommand(NewCmdStatus(f, nil))
	return cmd
}

// StatusOptions are `argusctl cluster status`'s flags and dependencies.
type StatusOptions struct {
	IO      *iostreams.IOStreams
	Factory *cmdutil.Factory
	// Now is the time lease ages are shown against (tests fix it).
	Now func() time.Time
}

// Node is one node of GET /v1/cluster's answer.
type Node struct {
	ID         string     `json:"id"`
	APIURL     string     `json:"api_url"`
	MQTTURL    string     `json:"mqtt_url"`
	Version    string     `json:"version"`
	StartedAt  time.Time  `json:"started_at"`
	RenewedAt  time.Time  `json:"renewed_at"`
	LeaseAge   float64    `json:"lease_age_seconds"`
	Alive      bool       `json:"alive"`
	Fenced     bool       `json:"fenced"`
	LeftAt     *time.Time `json:"left_at,omitempty"`
	AgentsHeld int        `json:"agents_held"`
	Reachable  *bool      `json:"reachable,omitempty"`
	ThisNode   bool       `json:"this_node,omitempty"`
}

// Status is GET /v1/cluster's answer.
type Status struct {
	Node  string `json:"node"`
	Nodes []Node `json:"nodes"`
}

// NewCmdStatus builds `argusctl cluster status`; runF replaces the run
// step in tests.
func NewCmdStatus(f *cmdutil.Factory, runF func(context.Context, *StatusOptions) error) *cobra.Command {
	opts := &StatusOptions{IO: f.IOStreams, Factory: f, Now: time.Now}
	return &cobra.Command{
		Use:   "status",
		Short: "List the nodes: lease age, version, agents held, fenced or not",
		Long: `List the cluster's nodes as the node the call reaches sees them: when each
last renewed its lease, its version, how many agents it holds, whether it
is fenced (it lost its lease and serves nothing) and whether the node asked
reaches it over NATS. A node that has left or died stays listed for an hour.
A single server is a cluster of one: one row.`,
		Example: `  argusctl cluster status
  argusctl cluster status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return StatusRun(cmd.Context(), opts)
		},
	}
}

// StatusRun asks the API for the cluster's nodes and prints them.
func StatusRun(ctx context.Context, opts *StatusOptions) error {
	c, err := opts.Factory.APIClient()
	if err != nil {
		return err
	}
	if c.Token == "" {
		return fmt.Errorf("no operator token: pass --token, set ARGUSCTL_TOKEN, or add token: to a profile in the config file")
	}
	var st Status
	if err := c.Do(ctx, "GET", "/v1/cluster", nil, &st); err != nil {
		return err
	}
	if st.Nodes == nil {
		st.Nodes = []Node{}
	}
	if opts.Factory.Output() == "json" {
		return cmdutil.PrintJSON(opts.IO, st)
	}
	t := cmdutil.NewTable(opts.IO, "NODE", "STATE", "LEASE AGE", "VERSION", "AGENTS", "FENCED", "REACHABLE", "API")
	for _, n := range st.Nodes {
		id := n.ID
		if n.ThisNode {
			id += " *"
		}
		t.Row(id, state(n), fmt.Sprintf("%.1fs", n.LeaseAge), n.Version, strconv.Itoa(n.AgentsHeld),
			cmdutil.YesNo(n.Fenced), reachable(n), n.APIURL)
	}
	return t.Flush()
}

func state(n Node) string {
	switch {
	case n.LeftAt != nil:
		return "left"
	case !n.Alive:
		return "dead"
	case n.Fenced:
		return "fenced"
	}
	return "alive"
}

func reachable(n Node) string {
	if n.Reachable == nil {
		return "-"
	}
	return cmdutil.YesNo(*n.Reachable)
}
