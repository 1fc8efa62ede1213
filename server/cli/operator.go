package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/server"
)

func newOperatorCmd(io IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Manage operators directly in the database (bootstrap)",
	}
	cmd.AddCommand(newOperatorCreateCmd(io))
	return cmd
}

func newOperatorCreateCmd(io IOStreams) *cobra.Command {
	var (
		name        string
		scopes      []string
		expires     time.Duration
		description string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create an operator and print its first token, once",
		Long: `Create an operator with a first bearer token and print the token, alone,
on standard output. It is shown once and stored only as a hash.

This talks to the database directly, so it works before any operator
exists, whether or not the server is running.

Scopes: remote_support, tenant:arm, tenant:admin, agent:admin, audit:read,
operator:admin, monitor.`,
		Example: `  argus-server operator create --name admin --scope operator:admin --scope tenant:admin --scope agent:admin
  TOKEN=$(argus-server operator create --name alice --scope remote_support --expires 720h)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := operators.ParseScopes(scopes)
			if err != nil {
				return fmt.Errorf("--scope: %w", err)
			}
			if expires < 0 {
				return fmt.Errorf("--expires must not be negative")
			}
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			db, err := server.OpenDatabase(ctx, cfg, log, false)
			if err != nil {
				return err
			}
			defer db.Close(context.WithoutCancel(ctx))
			p, token, err := operators.NewStore(db.Pool).Create(ctx, name, operators.NewToken{
				Scopes: sc, TTL: expires, Description: description,
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(io.Out, token)
			fmt.Fprintf(io.ErrOut, "created operator %s (%s) with scopes %v; the token above is shown once\n", p.OperatorName, p.OperatorID, p.Scopes)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "operator name (required)")
	f.StringArrayVar(&scopes, "scope", nil, "scope to grant (repeatable, required)")
	f.DurationVar(&expires, "expires", 0, "token lifetime (e.g. 720h); 0 means it does not expire")
	f.StringVar(&description, "description", "", "what the token is for")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("scope")
	return cmd
}
