package collect_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/transcript"
	"github.com/argus-remote/argus/controlplane/transcript/collect"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/migrations"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type fixture struct{ tenant, agent, session string }

// newSession inserts a tenant, an agent and a live session of it.
func newSession(t testing.TB, pool *pgxpool.Pool, op, name string) fixture {
	t.Helper()
	ctx := context.Background()
	f := fixture{tenant: uuid.NewString(), agent: uuid.NewString(), session: uuid.NewString()}
	hash := make([]byte, 32)
	_, err := pool.Exec(ctx, `INSERT INTO tenants (id, name) VALUES ($1, $2)`, f.tenant, name)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO agents (id, tenant_id, name, secret_hash) VALUES ($1, $2, 'cam-host', $3)`, f.agent, f.tenant, hash)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO support_sessions (id, tenant_id, agent_id, operator_id, token_hash, reason, expires_at)
		VALUES ($1, $2, $3, $4, $5, 'ticket 1', now() + interval '30 minutes')`, f.session, f.tenant, f.agent, op, hash)
	require.NoError(t, err)
	return f
}

func TestSession_OwnActionsInFullOthersAsLinksOnly(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var op string
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO operators (name) VALUES ('alice') RETURNING id`).Scan(&op))
	a := newSession(t, pool, op, "acme")
	b := newSession(t, pool, op, "globex")
	write := func(f fixture, action, secret string) {
		require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "operator:alice", Action: action, Outcome: audit.Success,
			TenantID: f.tenant, AgentID: f.agent, SessionID: f.session, Detail: map[string]any{"note": secret}}))
	}
	require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "before", Outcome: audit.Success}))
	write(a, "support.activate", "a-open")
	// Another tenant's session runs at the same time: its actions land
	// between a's in the chain.
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(2)
		go func() { defer wg.Done(); write(a, "support.command", "a-cmd") }()
		go func() { defer wg.Done(); write(b, "support.command", "globex-secret") }()
	}
	wg.Wait()
	write(a, "support.deactivate", "a-close")
	require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "after", Outcome: audit.Success}))

	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tr, err := collect.Session(ctx, pool, a.session, "", key)
	require.NoError(t, err)
	assert.Empty(t, transcript.Verify(tr, key.Public().(ed25519.PublicKey)))
	assert.Equal(t, 5, tr.Actions)
	assert.Equal(t, a.session, tr.Session.ID)
	assert.Equal(t, a.tenant, tr.Session.TenantID)
	var actions []string
	for _, e := range tr.Entries {
		if e.Own() {
			var ev audit.Event
			require.NoError(t, json.Unmarshal(e.Event, &ev))
			actions = append(actions, ev.Action)
		}
	}
	assert.Equal(t, []string{"support.activate", "support.command", "support.command", "support.command", "support.deactivate"}, actions)
	// Seq 1 is "before": the span starts at a's first action, ends at its last.
	assert.Equal(t, int64(2), tr.FirstSeq)
	assert.Equal(t, int64(9), tr.LastSeq)
	assert.Len(t, tr.Entries, 8)
	body, err := json.Marshal(tr)
	require.NoError(t, err)
	for _, leak := range []string{b.session, b.tenant, b.agent, "globex"} {
		assert.NotContains(t, string(body), leak, "another tenant's events show nothing of themselves")
	}

	// Asked for on behalf of tenant b, a's session does not exist.
	_, err = collect.Session(ctx, pool, a.session, b.tenant, key)
	assert.ErrorIs(t, err, collect.ErrNotFound)
	_, err = collect.Session(ctx, pool, uuid.NewString(), "", key)
	assert.ErrorIs(t, err, collect.ErrNotFound)
	tb, err := collect.Session(ctx, pool, b.session, b.tenant, key)
	require.NoError(t, err)
	assert.Equal(t, 3, tb.Actions)
	assert.Empty(t, transcript.Verify(tb, key.Public().(ed25519.PublicKey)))
}

// Events written before migration 0006 kept no bytes of their own; the
// transcript carries the canonical form of their payload, which is what
// their hash covers, and still verifies across old and new events.
func TestSession_EventsFromBeforeTheirBytesWereKept(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.EmptyDatabase(t))
	require.NoError(t, err)
	defer pool.Close()
	_, err = migrations.ApplyTo(ctx, pool, 5)
	require.NoError(t, err)
	var op string
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO operators (name) VALUES ('alice') RETURNING id`).Scan(&op))
	f := newSession(t, pool, op, "acme")

	// As the code before 0006 wrote them: the session's, another's, the session's.
	prev := make([]byte, 32)
	for i, session := range []string{f.session, "", f.session} {
		id, at := uuid.NewString(), time.Now().UTC().Truncate(time.Microsecond)
		ev := audit.Event{ID: id, OccurredAt: at.Format(time.RFC3339Nano), Actor: "operator:alice", Action: "test.legacy",
			Outcome: audit.Success, SessionID: session, Detail: map[string]any{"i": i, "half": 0.5}}
		payload, err := audit.Canonical(ev)
		require.NoError(t, err)
		hash := audit.ChainHash(prev, payload)
		_, err = pool.Exec(ctx, `INSERT INTO audit_log (id, occurred_at, actor, action, outcome, session_id) VALUES ($1, $2, $3, $4, $5, NULLIF($6, '')::uuid)`,
			id, at, ev.Actor, ev.Action, ev.Outcome, session)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `INSERT INTO events (seq, id, occurred_at, action, payload, prev_hash, hash) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)`,
			i+1, id, at, ev.Action, string(payload), prev, hash)
		require.NoError(t, err)
		prev = hash
	}
	_, err = migrations.Apply(ctx, pool)
	require.NoError(t, err)
	require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "support.session.end", Outcome: audit.Success,
		SessionID: f.session, TenantID: f.tenant}))

	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tr, err := collect.Session(ctx, pool, f.session, "", key)
	require.NoError(t, err)
	assert.Empty(t, transcript.Verify(tr, key.Public().(ed25519.PublicKey)))
	assert.Equal(t, 3, tr.Actions)
	assert.Equal(t, []bool{true, false, true, true}, []bool{tr.Entries[0].Own(), tr.Entries[1].Own(), tr.Entries[2].Own(), tr.Entries[3].Own()})
}
