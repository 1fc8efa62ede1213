package reconcile_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/reconcile"
	"github.com/argus-remote/argus/internal/testenv"
)

// ownerDeletes deletes as the tables' owner can: every trigger off.
func ownerDeletes(t *testing.T, pool *pgxpool.Pool, events, auditLog string, args ...any) {
	t.Helper()
	ctx := context.Background()
	for _, stmt := range []string{
		"ALTER TABLE events DISABLE TRIGGER ALL",
		events,
		"ALTER TABLE events ENABLE TRIGGER ALL",
		auditLog,
	} {
		_, err := pool.Exec(ctx, stmt, argsFor(stmt, events, auditLog, args)...)
		require.NoError(t, err, stmt)
	}
}

func argsFor(stmt, events, auditLog string, args []any) []any {
	if stmt == events || stmt == auditLog {
		return args
	}
	return nil
}

func hasKind(r reconcile.Report, kind string) bool {
	for _, m := range r.Mismatches {
		if m.Kind == kind {
			return true
		}
	}
	return false
}

// verified runs a reconciliation over [from, to] and records it, as the
// nightly run and the on-demand ones do.
func verified(t *testing.T, pool *pgxpool.Pool, from, to time.Time) reconcile.Report {
	t.Helper()
	ctx := context.Background()
	r, err := reconcile.Run(ctx, pool, from, to)
	require.NoError(t, err)
	require.NoError(t, reconcile.Record(ctx, pool, r, audit.Entry{Actor: "system:test"}, reconcile.Source{Kind: reconcile.KindCLI, Node: "n1"}))
	return r
}

// Deleting the newest rows of both trails leaves no gap behind: only the
// head an earlier run recorded shows the chain once went further.
func TestReconcile_ReportsADeletedTail(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	history(t, pool, 12)
	from, to := window()
	require.True(t, verified(t, pool, from, to).Clean)

	ownerDeletes(t, pool,
		"DELETE FROM events WHERE seq > (SELECT max(seq) - 5 FROM events)",
		"DELETE FROM audit_log WHERE id NOT IN (SELECT id FROM events)")
	var left int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&left))
	require.Equal(t, 8, left, "12 actions and the run's own, less the last 5")

	r, err := reconcile.Run(ctx, pool, from, time.Now().Add(time.Minute))
	require.NoError(t, err)
	t.Log(r.Text())
	assert.False(t, r.Clean)
	assert.True(t, hasKind(r, reconcile.ChainTruncated), "the recorded head is gone")
}

// Deleting every row of a window, at the end of the chain or inside it,
// is reported.
func TestReconcile_ReportsADeletedWindow(t *testing.T) {
	ctx := context.Background()
	t.Run("the newest", func(t *testing.T) {
		pool := testenv.Pool(t)
		history(t, pool, 8)
		from, to := window()
		require.True(t, verified(t, pool, from, to).Clean)
		ownerDeletes(t, pool, "DELETE FROM events WHERE occurred_at BETWEEN $1 AND $2", "DELETE FROM audit_log WHERE occurred_at BETWEEN $1 AND $2", from, to)

		r, err := reconcile.Run(ctx, pool, from, to)
		require.NoError(t, err)
		t.Log(r.Text())
		assert.False(t, r.Clean)
		assert.True(t, hasKind(r, reconcile.ChainTruncated))
		assert.True(t, hasKind(r, reconcile.EmptyWindow), "an earlier run saw an event in this window")
	})
	t.Run("events only", func(t *testing.T) {
		pool := testenv.Pool(t)
		history(t, pool, 4)
		from, to := window()
		ownerDeletes(t, pool, "DELETE FROM events", "SELECT 1")

		r, err := reconcile.Run(ctx, pool, from, to)
		require.NoError(t, err)
		assert.True(t, hasKind(r, reconcile.NoEvents), "%s", r.Text())
		assert.True(t, hasKind(r, reconcile.MissingEvent))
	})
	t.Run("inside the chain", func(t *testing.T) {
		pool := testenv.Pool(t)
		for i := range 15 { // one after the other: times in chain order
			require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "test.sequential", Outcome: audit.Success,
				Detail: map[string]any{"i": i}}))
		}
		// The window: the middle five events.
		var from, to time.Time
		require.NoError(t, pool.QueryRow(ctx, "SELECT min(occurred_at), max(occurred_at) FROM events WHERE seq BETWEEN 6 AND 10").Scan(&from, &to))
		first := verified(t, pool, from, to)
		require.True(t, first.Clean, "%s", first.Text())
		require.Equal(t, 5, first.Events)
		require.Equal(t, int64(10), first.Head.Seq)
		ownerDeletes(t, pool, "DELETE FROM events WHERE occurred_at BETWEEN $1 AND $2", "DELETE FROM audit_log WHERE occurred_at BETWEEN $1 AND $2", from, to)

		r, err := reconcile.Run(ctx, pool, from, to)
		require.NoError(t, err)
		t.Log(r.Text())
		assert.False(t, r.Clean)
		assert.True(t, hasKind(r, reconcile.ChainTruncated), "the head the first run recorded is gone")
		assert.True(t, hasKind(r, reconcile.EmptyWindow))
		assert.True(t, hasKind(r, reconcile.SequenceGap), "the events around the window no longer link")
	})
}

// sequential writes n audited actions one after the other, so that their
// times are in chain order, and returns their sequence numbers' range.
func sequential(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	for i := range n {
		require.NoError(t, audit.Write(context.Background(), pool, audit.Entry{Actor: "system", Action: "test.sequential",
			Outcome: audit.Success, Detail: map[string]any{"i": i}}))
	}
}

func occurredAt(t *testing.T, pool *pgxpool.Pool, seq int) time.Time {
	t.Helper()
	var at time.Time
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT occurred_at FROM events WHERE seq = $1", seq).Scan(&at))
	return at
}

// A run verifies the chain from the head the run before it recorded, not
// only inside its own window: an event deleted between the two is found
// by a run whose window no longer covers it.
func TestReconcile_ExtendsTheHeadBefore(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	sequential(t, pool, 10)
	first := verified(t, pool, occurredAt(t, pool, 1), time.Now().Add(time.Minute))
	require.True(t, first.Clean, "%s", first.Text())
	require.Equal(t, int64(10), first.Head.Seq)
	sequential(t, pool, 10) // 11 is the first run's own audit event; these are 12..21

	victim := nthEvent(t, pool, 14)
	ownerDeletes(t, pool, "DELETE FROM events WHERE id = $1", "DELETE FROM audit_log WHERE id = $1", victim)

	// A window with only the last three events.
	r, err := reconcile.Run(ctx, pool, occurredAt(t, pool, 19), time.Now().Add(time.Minute))
	require.NoError(t, err)
	t.Log(r.Text())
	assert.Equal(t, 3, r.Events)
	require.NotNil(t, r.Extends)
	assert.Equal(t, int64(10), r.Extends.Seq, "it extends the first run's head")
	assert.Equal(t, first.Head.Hash, r.Extends.Hash)
	assert.Equal(t, int64(21), r.Head.Seq)
	assert.Contains(t, kinds(r, nthEvent(t, pool, 15)), reconcile.SequenceGap, "the gap outside the window, after the head it extends")
	assert.Contains(t, kinds(r, nthEvent(t, pool, 15)), reconcile.BrokenChain)
}

// Runs at once, beside writers, each check the heads recorded before
// their own snapshot and none sees a truncation that is not there.
func TestReconcile_ConcurrentRunsAgree(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	history(t, pool, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		history(t, pool, 60)
	}()
	reports := make(chan reconcile.Report, 12)
	for range 4 {
		go func() {
			for range 3 {
				from, to := window()
				r, err := reconcile.Run(ctx, pool, from, to)
				if assert.NoError(t, err) {
					assert.NoError(t, reconcile.Record(ctx, pool, r, audit.Entry{Actor: "system:test"}, reconcile.Source{Kind: reconcile.KindAPI}))
				}
				reports <- r
			}
		}()
	}
	for range 12 {
		r := <-reports
		assert.True(t, r.Clean, "%s", r.Text())
	}
	<-done
	from, to := window()
	r, err := reconcile.Run(ctx, pool, from, to)
	require.NoError(t, err)
	assert.True(t, r.Clean, "%s", r.Text())
	var runs, heads int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*), count(head_seq) FROM reconcile_runs").Scan(&runs, &heads))
	assert.Equal(t, 12, runs)
	assert.Equal(t, 12, heads)
}
