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

	rows, err := pool.Query(ctx, "SELECT seq, payload, canonical, prev_hash, hash FROM events ORDER BY seq")
	require.NoError(t, err)
	defer rows.Close()
	prev := make([]byte, 32)
	want := int64(1)
	for rows.Next() {
		var (
			seq                   int64
			payload               json.RawMessage
			canon, prevHash, hash []byte
		)
		require.NoError(t, rows.Scan(&seq, &payload, &canon, &prevHash, &hash))
		assert.Equal(t, want, seq, "no gap, no fork")
		assert.Equal(t, prev, prevHash, "links to the row before")
		assert.Equal(t, audit.ChainHash(prevHash, canon), hash, "hash recomputes from the stored bytes")
		again, err := audit.Canonical(json.RawMessage(canon))
		require.NoError(t, err)
		assert.Equal(t, string(canon), string(again), "the stored bytes are canonical")
		assert.True(t, sameJSON(canon, payload), "the payload says what the hashed bytes say")
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

// Every column of both rows is written as given, for entries that fill
// each optional field and entries that leave it out, alone and in a group.
func TestCommitter_WritesEveryColumn(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	c := audit.NewCommitter(pool)
	defer c.Close()
	full := audit.Entry{
		Actor: "operator:alice", OperatorID: "7c1e2a9b-4d3f-4e8a-9b1c-2d3e4f5a6b7c", Action: "test.full", Outcome: audit.Denied,
		TenantID: "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a", AgentID: "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b",
		SessionID: "3f4a5b6c-7d8e-4f9a-0b1c-2d3e4f5a6b7c", ClientIP: "2001:db8::7", Reason: "INC-7 <ticket>",
		Detail: map[string]any{"n": 1, "s": "é"},
	}
	bare := audit.Entry{Actor: "system", Action: "test.bare", Outcome: audit.Success, TenantID: "not-a-uuid", ClientIP: "unknown"}
	require.NoError(t, c.Exec(ctx, nil, full, bare))
	require.NoError(t, audit.Write(ctx, pool, full))

	type logRow struct {
		Actor, Action, Outcome                      string
		Tenant, Agent, Session, IP, Reason, Payload *string
		Detail                                      map[string]any
	}
	read := func(action string) []logRow {
		rows, err := pool.Query(ctx, `SELECT a.actor, a.action, a.outcome, a.tenant_id::text, a.agent_id::text, a.session_id::text,
			host(a.client_ip), a.reason, e.payload::text, a.detail
			FROM audit_log a JOIN events e USING (id) WHERE a.action = $1 ORDER BY e.seq`, action)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (logRow, error) {
			var l logRow
			err := r.Scan(&l.Actor, &l.Action, &l.Outcome, &l.Tenant, &l.Agent, &l.Session, &l.IP, &l.Reason, &l.Payload, &l.Detail)
			return l, err
		})
		require.NoError(t, err)
		return out
	}
	fulls := read("test.full")
	require.Len(t, fulls, 2, "grouped and alone")
	for _, l := range fulls {
		assert.Equal(t, "operator:alice", l.Actor)
		assert.Equal(t, audit.Denied, l.Outcome)
		assert.Equal(t, full.TenantID, *l.Tenant)
		assert.Equal(t, full.AgentID, *l.Agent)
		assert.Equal(t, full.SessionID, *l.Session)
		assert.Equal(t, "2001:db8::7", *l.IP)
		assert.Equal(t, "INC-7 <ticket>", *l.Reason)
		assert.Equal(t, map[string]any{"n": float64(1), "s": "é", "operator_id": full.OperatorID}, l.Detail)
		var ev audit.Event
		require.NoError(t, json.Unmarshal([]byte(*l.Payload), &ev))
		assert.Equal(t, "test.full", ev.Action)
		assert.Equal(t, full.ClientIP, ev.ClientIP)
	}
	bares := read("test.bare")
	require.Len(t, bares, 1)
	b := bares[0]
	assert.Nil(t, b.Tenant, "a tenant id that is not a UUID is kept in the event only")
	assert.Nil(t, b.Agent)
	assert.Nil(t, b.Session)
	assert.Nil(t, b.IP, "a client address that is not an address is kept in the event only")
	assert.Nil(t, b.Reason)
	assert.Empty(t, b.Detail)

	ok, err := reconcileWindow(ctx, pool)
	require.NoError(t, err)
	assert.True(t, ok)
}
