package audit_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

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
