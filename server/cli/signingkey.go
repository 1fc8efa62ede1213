package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/server"
)

func newSigningKeyCmd(io IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "signing-key",
		Short: "Rotate the control plane's command-signing key (direct database access)",
		Long: `The control plane signs every activation and command with an ed25519 key that
agents pin at enrollment. 'rotate' introduces a new key to every agent by a key
change signed with the current key; agents accept both until 'retire' withdraws
the old ones. A running server picks the change up within a second, signs with
the new key from then on, and hands the chain to each agent: at once to those
connected, as they connect to the others.

The key set is recorded in the database; private keys are 0600 files beside
the configured command-signing-key and never leave this machine.`,
	}
	cmd.AddCommand(newSigningKeyRotateCmd(io), newSigningKeyStatusCmd(io), newSigningKeyRetireCmd(io))
	return cmd
}

// openKeys opens the database (refusing a data directory without one) and
// makes sure the key set is recorded.
func openKeys(cmd *cobra.Command) (*server.Database, string, []signing.Key, error) {
	cfg, db, err := openDatabase(cmd)
	if err != nil {
		return nil, "", nil, err
	}
	keys, err := signing.Bootstrap(cmd.Context(), db.Pool, cfg.CommandSigningKey)
	if err != nil {
		db.Close(context.WithoutCancel(cmd.Context()))
		return nil, "", nil, err
	}
	return db, filepath.Dir(cfg.CommandSigningKey), keys, nil
}

func cliActor(verb string) audit.Entry {
	return audit.Entry{Actor: "system:cli", Detail: map[string]any{"via": "argus-server signing-key " + verb}}
}

func newSigningKeyRotateCmd(io IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate",
		Short: "Make a new signing key and introduce it to every agent",
		Long: `Make a new signing key, write its private half (0600) beside the current one,
and record it with a key change signed by the current key. Prints the new
key's id. Servers sign with the new key from their next check (within a
second); agents accept both keys until 'argus-server signing-key retire'.

On a cluster, copy the new key file to every node's key directory before
retiring the old key: a node without it keeps signing with the old one
(agents accept it until 'retire'), and after 'retire' signs nothing, fails
/readyz with signing_key_missing and refuses activations and commands
(signing_key_missing, audited) until the file is copied in; it does not need a restart.`,
		Example: `  argus-server signing-key rotate
  argus-server signing-key status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			db, dir, _, err := openKeys(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			defer db.Close(context.WithoutCancel(ctx))
			k, err := signing.Rotate(ctx, db.Pool, dir, cliActor("rotate"))
			if err != nil {
				return err
			}
			fmt.Fprintln(io.Out, k.ID)
			fmt.Fprintf(io.ErrOut, "new signing key %s (seq %d) in %s; agents accept the old and the new key until 'argus-server signing-key retire'\n",
				k.ID, k.Seq, filepath.Join(dir, k.File))
			return nil
		},
	}
}

func newSigningKeyRetireCmd(io IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "retire",
		Short: "Withdraw every signing key but the current one",
		Long: `Retire every key but the newest, with a retirement signed by the newest key,
and delete their private key files. Agents refuse anything signed by a retired
key from the moment they receive the retirement (at once when connected, as
they connect otherwise). An agent that has not yet followed the rotation still
can: the retirement travels after the key change in the chain. Prints the
retired keys' ids.`,
		Example: `  argus-server signing-key status
  argus-server signing-key retire`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			db, dir, _, err := openKeys(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			defer db.Close(context.WithoutCancel(ctx))
			retired, err := signing.Retire(ctx, db.Pool, dir, cliActor("retire"))
			for _, k := range retired {
				fmt.Fprintln(io.Out, k.ID)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(io.ErrOut, "retired %d key(s); agents refuse them once they receive the retirement\n", len(retired))
			return nil
		},
	}
}

// keyStatus is what 'signing-key status --json' prints.
type keyStatus struct {
	Keys []keyRow `json:"keys"`
	// Agents counts live agents; Confirmed those that report holding the
	// current key and no retired one.
	Agents    int `json:"agents"`
	Confirmed int `json:"confirmed"`
}

type keyRow struct {
	Seq       int        `json:"seq"`
	ID        string     `json:"key_id"`
	State     string     `json:"state"`
	File      string     `json:"file"`
	CreatedAt time.Time  `json:"created_at"`
	RetiredAt *time.Time `json:"retired_at,omitempty"`
}

func newSigningKeyStatusCmd(io IOStreams) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the signing keys and how many agents hold the current set",
		Example: `  argus-server signing-key status
  argus-server signing-key status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			db, _, keys, err := openKeys(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			defer db.Close(context.WithoutCancel(ctx))
			var st keyStatus
			newest, live := "", []string{}
			for i, k := range keys {
				r := keyRow{Seq: k.Seq, ID: k.ID, State: "live", File: k.File, CreatedAt: k.CreatedAt, RetiredAt: k.RetiredAt}
				switch {
				case k.RetiredAt != nil:
					r.State = "retired"
				case i == len(keys)-1:
					r.State = "current"
				}
				if k.RetiredAt == nil {
					live = append(live, k.ID)
				}
				newest = k.ID
				st.Keys = append(st.Keys, r)
			}
			if err := db.Pool.QueryRow(ctx, `SELECT count(*),
				count(*) FILTER (WHERE s.newest_key_id = $1 AND s.oldest_key_id = ANY ($2))
				FROM agents a LEFT JOIN signing_key_agents s ON s.agent_id = a.id WHERE a.revoked_at IS NULL`,
				newest, live).Scan(&st.Agents, &st.Confirmed); err != nil {
				return err
			}
			if len(keys) == 1 {
				st.Confirmed = st.Agents // no key change yet: every agent holds the one key
			}
			if asJSON {
				enc := json.NewEncoder(io.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SEQ\tKEY ID\tSTATE\tCREATED\tRETIRED")
			for _, r := range st.Keys {
				retired := "-"
				if r.RetiredAt != nil {
					retired = r.RetiredAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", r.Seq, r.ID, r.State, r.CreatedAt.UTC().Format(time.RFC3339), retired)
			}
			_ = w.Flush()
			fmt.Fprintf(io.Out, "agents holding the live key set: %d of %d\n", st.Confirmed, st.Agents)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}
