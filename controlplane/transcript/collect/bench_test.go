package collect_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/transcript"
	"github.com/argus-remote/argus/controlplane/transcript/collect"
	"github.com/argus-remote/argus/internal/testenv"
)

// BenchmarkSession_Span20k is a session of 50 actions among 20,000 other
// events: the time to read, sign and encode its transcript, and its size.
func BenchmarkSession_Span20k(b *testing.B) {
	pool := testenv.Pool(b)
	ctx := context.Background()
	var op string
	require.NoError(b, pool.QueryRow(ctx, `INSERT INTO operators (name) VALUES ('alice') RETURNING id`).Scan(&op))
	f := newSession(b, pool, op, "acme")
	fill(b, pool, f)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(b, err)
	pub := key.Public().(ed25519.PublicKey)
	b.ResetTimer()
	var size int
	for range b.N {
		tr, err := collect.Session(ctx, pool, f.session, "", key)
		require.NoError(b, err)
		out, err := json.Marshal(tr)
		require.NoError(b, err)
		size = len(out)
		b.StopTimer()
		require.Empty(b, transcript.Verify(tr, pub))
		b.StartTimer()
	}
	b.ReportMetric(float64(size), "bytes/transcript")
}

// BenchmarkVerify_Span20k is the offline check of such a transcript,
// parsed from its file.
func BenchmarkVerify_Span20k(b *testing.B) {
	pool := testenv.Pool(b)
	ctx := context.Background()
	var op string
	require.NoError(b, pool.QueryRow(ctx, `INSERT INTO operators (name) VALUES ('alice') RETURNING id`).Scan(&op))
	f := newSession(b, pool, op, "acme")
	fill(b, pool, f)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(b, err)
	tr, err := collect.Session(ctx, pool, f.session, "", key)
	require.NoError(b, err)
	data, err := json.Marshal(tr)
	require.NoError(b, err)
	pub := key.Public().(ed25519.PublicKey)
	b.ResetTimer()
	for range b.N {
		t, err := transcript.Parse(data)
		require.NoError(b, err)
		require.Empty(b, transcript.Verify(t, pub))
	}
}

// fill writes 20,050 events, one in 401 of them the session's.
func fill(b *testing.B, pool *pgxpool.Pool, f fixture) {
	ctx := context.Background()
	c := audit.NewCommitter(pool)
	defer c.Close()
	require.NoError(b, c.Do(ctx, func(ctx context.Context, tx pgx.Tx) error {
		for i := range 20_050 {
			e := audit.Entry{Actor: "operator:alice", Action: "support.command.completed", Outcome: audit.Success,
				Detail: map[string]any{"command": "tail_log", "lines": 100, "i": i}}
			if i%401 == 0 {
				e.TenantID, e.AgentID, e.SessionID = f.tenant, f.agent, f.session
			}
			if _, err := audit.Record(ctx, tx, e); err != nil {
				return err
			}
		}
		return nil
	}))
}
