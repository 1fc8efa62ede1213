package audit_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestRecord_WritesBothRowsWithAnUnbrokenChain(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, audit.Write(ctx, pool, audit.Entry{
				Actor: "system", Action: "test.concurrent", Outcome: audit.Success,
				ClientIP: "10.0.0.1", Detail: map[string]any{"i": i, "nested": map[string]any{"b": 1, "a": "x"}},
			}))
		}()
	}
	wg.Wait()

	var logRows, eventRows int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log").Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&eventRows))
	assert.Equal(t, 20, logRows)
	assert.Equal(t, 20, eventRows)

	rows, err := pool.Query(ctx, "SELECT seq, payload, prev_hash, hash FROM events ORDER BY seq")
	require.NoError(t, err)
	defer rows.Close()
	prev := make([]byte, 32)
	want := int64(1)
	for rows.Next() {
		var (
			seq            int64
			payload        json.RawMessage
			prevHash, hash []byte
		)
		require.NoError(t, rows.Scan(&seq, &payload, &prevHash, &hash))
		assert.Equal(t, want, seq, "no gap, no fork")
		assert.Equal(t, prev, prevHash, "links to the row before")
		canon, err := audit.Canonical(json.RawMessage(payload))
		require.NoError(t, err)
		assert.Equal(t, audit.ChainHash(prevHash, canon), hash, "hash recomputes from the stored payload")
		prev = hash
		want++
	}
	require.NoError(t, rows.Err())
}

func TestRecord_RolledBackWithItsTransaction(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = audit.Record(ctx, tx, audit.Entry{Actor: "system", Action: "test.rollback", Outcome: audit.Success})
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM audit_log) + (SELECT count(*) FROM events)").Scan(&n))
	assert.Zero(t, n, "neither row survives a rollback")
}

func TestCommitter_GroupsWithoutForkingAndIsolatesFailures(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	c := audit.NewCommitter(pool)
	defer c.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Do(ctx, func(ctx context.Context, tx pgx.Tx) error {
				if _, err := audit.Record(ctx, tx, audit.Entry{Actor: "system", Action: "test.group", Outcome: audit.Success,
					Detail: map[string]any{"i": i}}); err != nil {
					return err
				}
				if i%10 == 0 { // a job whose own work fails after its audit row
					_, err := tx.Exec(ctx, "SELECT 1/0")
					return err
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	assert.Equal(t, 10, failed, "exactly the failing jobs fail")

	var logRows, events int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log").Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&events))
	assert.Equal(t, 90, logRows, "a failed job leaves no audit row")
	assert.Equal(t, 90, events)
	var gaps, broken int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE seq - lag_seq <> 1), count(*) FILTER (WHERE prev_hash <> lag_hash)
		FROM (SELECT seq, prev_hash, lag(seq) OVER w AS lag_seq, lag(hash) OVER w AS lag_hash FROM events WINDOW w AS (ORDER BY seq)) x`).Scan(&gaps, &broken))
	assert.Zero(t, gaps, "no gap in the sequence")
	assert.Zero(t, broken, "no broken link")
}

func TestCommitter_PipelinedJobsChainAndReconcile(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, "CREATE TABLE scratch (n int PRIMARY KEY)")
	require.NoError(t, err)
	c := audit.NewCommitter(pool)
	defer c.Close()

	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 80 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := i
			if i%20 == 0 {
				n = 1000 // the same key twice: the second insert fails and takes only itself down
			}
			err := c.Exec(ctx, []audit.Stmt{{SQL: "INSERT INTO scratch (n) VALUES ($1)", Args: []any{n}}},
				audit.Entry{Actor: "system", Action: "test.pipeline", Outcome: audit.Success, Detail: map[string]any{"n": n}})
			if err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(3), failed.Load(), "three of the four duplicate keys fail, alone")
	var scratch, logRows, events int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&scratch))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log").Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&events))
	assert.Equal(t, 77, scratch)
	assert.Equal(t, 77, logRows, "each state change has its audit row, and only those")
	assert.Equal(t, 77, events)

	r, err := reconcileWindow(ctx, pool)
	require.NoError(t, err)
	assert.True(t, r, "the pipelined chain reconciles")
}
