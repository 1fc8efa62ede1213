package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/testenv"
)

func TestAudit_ReconcileCommandAndArgusctlVerify(t *testing.T) {
	f := newFleet(t)
	_, _ = f.enroll(t, "cam-a")

	out, stderr, err := testenv.Run(t, f.env.Vars(), "argus-server", "audit", "reconcile", "--since", "1h")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "All clear")
	out, stderr, err = f.cli(t, "audit", "verify", "--since", "1h")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "0 mismatches")
	out, _, err = f.cli(t, "audit", "list", "--tenant", "acme")
	require.NoError(t, err)
	assert.Contains(t, out, "agent.enroll")

	// Someone with database access removes the record of the enrollment.
	pool, err := pgxpool.New(context.Background(), f.env.DatabaseURL)
	require.NoError(t, err)
	defer pool.Close()
	var victim string
	require.NoError(t, pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(context.Background(), "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		return tx.QueryRow(context.Background(), "DELETE FROM events WHERE action = 'agent.enroll' RETURNING id").Scan(&victim)
	}))

	out, _, err = testenv.Run(t, f.env.Vars(), "argus-server", "audit", "reconcile", "--since", "1h")
	assert.Equal(t, 1, exitCode(err), "exit 1 on mismatch")
	assert.Contains(t, out, "missing_event id="+victim)
	out, _, err = f.cli(t, "audit", "verify", "--since", "1h")
	assert.Error(t, err)
	assert.True(t, strings.Contains(out, victim), out)
}
