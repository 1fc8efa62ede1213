package e2e

import (
	"context"
	"encoding/json"
	"strconv"
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
	assert.Contains(t, out, "chain head: seq ")
	out, stderr, err = f.cli(t, "audit", "verify", "--since", "1h")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "0 mismatches")
	assert.Contains(t, out, "chain head: seq ")
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

// Rows deleted from the end of both trails leave no gap behind them: the
// head each run records and shows is what betrays them, to the server's
// command and to argusctl alike.
func TestAudit_DeletedTailIsReportedByEveryRun(t *testing.T) {
	f := newFleet(t)
	_, _ = f.enroll(t, "cam-a")
	_, _ = f.enroll(t, "cam-b")

	out, stderr, err := f.cli(t, "audit", "verify", "--since", "1h", "-o", "json")
	require.NoError(t, err, stderr)
	var r struct {
		Clean bool `json:"clean"`
		Head  struct {
			Seq  int64  `json:"seq"`
			Hash string `json:"hash"`
		} `json:"head"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &r), out)
	require.True(t, r.Clean, out)
	require.Greater(t, r.Head.Seq, int64(3))
	out, stderr, err = f.cli(t, "audit", "verify", "--since", "1h")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "chain head: seq ", "argusctl shows the head to keep elsewhere")

	// The owner of the tables drops the newest rows of both trails.
	ctx := context.Background()
	for _, stmt := range []string{
		"ALTER TABLE events DISABLE TRIGGER ALL",
		"DELETE FROM events WHERE seq > " + strconv.FormatInt(r.Head.Seq-3, 10),
		"ALTER TABLE events ENABLE TRIGGER ALL",
		"DELETE FROM audit_log WHERE id NOT IN (SELECT id FROM events)",
	} {
		_, err := f.pool.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}

	out, _, err = testenv.Run(t, f.env.Vars(), "argus-server", "audit", "reconcile", "--since", "1h")
	assert.Equal(t, 1, exitCode(err), "exit 1 on mismatch: %s", out)
	assert.Contains(t, out, "chain_truncated")
	assert.Contains(t, out, r.Head.Hash, "it names the head that is gone")
	out, _, err = f.cli(t, "audit", "verify", "--since", "1h")
	assert.Error(t, err)
	assert.Contains(t, out, "chain_truncated")
	assert.Contains(t, out, "chain head: seq ")
}
