package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/server"
)

func newOperatorCmd(io IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Manage operators directly in the database (bootstrap)",
	}
	token := &cobra.Command{
		Use:   "token",
		Short: "Manage an operator's tokens directly in the database (recovery)",
	}
	token.AddCommand(newOperatorTokenCreateCmd(io))
	cmd.AddCommand(newOperatorCreateCmd(io), token)
	return cmd
}

func newOperatorTokenCreateCmd(io IOStreams) *cobra.Command {
	var (
		name        string
		scopes      []string
		expiresIn   time.Duration
		description string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Mint a token for an existing operator and print it, once",
		Long: `Mint a bearer token for an existing operator and print it, alone, on
standard output. It is shown once and stored only as a hash; the minting is
audited (actor "system").

This talks to the database directly: it is how a lost token is replaced
when no one holds an operator:admin token to do it through the API
('argusctl operator token create'). It does not enable a disabled operator.`,
		Example: `  TOKEN=$(argus-server operator token create --name admin --scope operator:admin --expires-in 24h)`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, db, err := openForToken(cmd, scopes, expiresIn)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			defer db.Close(context.WithoutCancel(ctx))
			info, token, err := operators.NewStore(db.Pool).CreateToken(ctx, name, operators.NewToken{
				Scopes: sc, TTL: expiresIn, Description: description,
			}, audit.Entry{Actor: "system", Detail: map[string]any{"via": "argus-server operator token create"}})
			if err != nil {
				return err
			}
			fmt.Fprintln(io.Out, token)
			expires := "never"
			if info.ExpiresAt != nil {
				expires = info.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(io.ErrOut, "token %s for %s with scopes %v, expires %s; the token above is shown once\n", info.ID, info.Operator, info.Scopes, expires)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "operator name (required)")
	f.StringArrayVar(&scopes, "scope", nil, "scope to grant (repeatable, required)")
	f.DurationVar(&expiresIn, "expires-in", 0, "token lifetime (like 720h); left out, it does not expire")
	f.StringVar(&description, "description", "", "what the token is for")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("scope")
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

An operator that already exists gets another token with
'argus-server operator token create --name NAME' (or, through the API,
'argusctl operator token create NAME').

Scopes: remote_support, tenant:arm, tenant:admin, agent:admin, audit:read,
operator:admin, monitor.`,
		Example: `  argus-server operator create --name admin --scope operator:admin --scope tenant:admin --scope agent:admin
  TOKEN=$(argus-server operator create --name alice --scope remote_support --expires-in 720h)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, db, err := openForToken(cmd, scopes, expires)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			defer db.Close(context.WithoutCancel(ctx))
			p, token, err := operators.NewStore(db.Pool).Create(ctx, name, operators.NewToken{
				Scopes: sc, TTL: expires, Description: description,
			})
			if errors.Is(err, operators.ErrExists) {
				return fmt.Errorf("%w: to give it another token, run 'argus-server operator token create --name %s --scope ...'", err, name)
			}
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
	f.DurationVar(&expires, "expires-in", 0, "token lifetime (like 720h); left out, it does not expire")
	// The flag's first name, kept for scripts that use it.
	f.DurationVar(&expires, "expires", 0, "token lifetime; use --expires-in")
	_ = f.MarkHidden("expires")
	f.StringVar(&description, "description", "", "what the token is for")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("scope")
	return cmd
}

// openForToken checks a new token's scopes and lifetime, then opens the
// database directly, for the commands that mint tokens without the API.
func openForToken(cmd *cobra.Command, scopes []string, expiresIn time.Duration) ([]operators.Scope, *server.Database, error) {
	sc, err := operators.ParseScopes(scopes)
	if err != nil {
		return nil, nil, fmt.Errorf("--scope: %w", err)
	}
	if expiresIn < 0 || (cmd.Flags().Changed("expires-in") && expiresIn == 0) {
		return nil, nil, fmt.Errorf("--expires-in must be positive (like 720h); leave it out for a token that does not expire")
	}
	_, db, err := openDatabase(cmd)
	if err != nil {
		return nil, nil, err
	}
	return sc, db, nil
}
