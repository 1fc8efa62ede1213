package migrations_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/migrations"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestApply_EmptyDatabaseThenIdempotent(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.EmptyDatabase(t))
	require.NoError(t, err)
	defer pool.Close()

	v, err := migrations.Current(ctx, pool)
	require.NoError(t, err)
	assert.Equal(t, 0, v)

	applied, err := migrations.Apply(ctx, pool)
	require.NoError(t, err)
	assert.NotEmpty(t, applied)
	assert.Equal(t, migrations.Latest(), applied[len(applied)-1])

	before := schemaFingerprint(t, pool)
	applied, err = migrations.Apply(ctx, pool)
	require.NoError(t, err)
	assert.Empty(t, applied, "a second run applies nothing")
	assert.Equal(t, before, schemaFingerprint(t, pool), "a second run changes nothing")

	v, err = migrations.Current(ctx, pool)
	require.NoError(t, err)
	assert.Equal(t, migrations.Latest(), v)
}

func TestApply_ConcurrentAppliersSerialise(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.EmptyDatabase(t))
	require.NoError(t, err)
	defer pool.Close()

	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := migrations.Apply(ctx, pool)
			errs <- err
		}()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n))
	all, err := migrations.All()
	require.NoError(t, err)
	assert.Equal(t, len(all), n)
}

func schemaFingerprint(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var s string
	err := pool.QueryRow(context.Background(), `
		SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' ORDER BY table_name, column_name)
		FROM information_schema.columns WHERE table_schema = 'public'`).Scan(&s)
	require.NoError(t, err)
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM schema_migrations").Scan(&n))
	return fmt.Sprintf("%s|%d", s, n)
}

// fixture inserts an operator, a tenant and an agent and returns their ids.
type fixture struct{ operator, tenant, agent string }

func newFixture(t *testing.T, pool *pgxpool.Pool) fixture {
	t.Helper()
	ctx := context.Background()
	var f fixture
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO operators (name) VALUES ('ops') RETURNING id").Scan(&f.operator))
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO tenants (name) VALUES ('acme') RETURNING id").Scan(&f.tenant))
	require.NoError(t, pool.QueryRow(ctx,
		"INSERT INTO agents (tenant_id, name, secret_hash) VALUES ($1, 'cam-1', sha256('x')) RETURNING id", f.tenant).Scan(&f.agent))
	return f
}

func requireViolation(t *testing.T, err error, constraint string) {
	t.Helper()
	require.Error(t, err)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, constraint, pgErr.ConstraintName, "error: %v", err)
}

func TestSchema_ArmedTenantNeedsConsent(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()

	_, err := pool.Exec(ctx, "INSERT INTO tenants (name, armed_at, arm_reason) VALUES ('rogue', now(), 'because')")
	requireViolation(t, err, "tenants_armed_requires_consent")

	f := newFixture(t, pool)
	_, err = pool.Exec(ctx, "UPDATE tenants SET armed_at = now(), arm_reason = 'x' WHERE id = $1", f.tenant)
	requireViolation(t, err, "tenants_armed_requires_consent")

	// With consent in force, arming works.
	var consent string
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO tenant_consents (tenant_id, document_id, signed_by, signed_at)
		VALUES ($1, 'DOC-1', 'Jane Roe', now()) RETURNING id`, f.tenant).Scan(&consent))
	_, err = pool.Exec(ctx, `UPDATE tenants SET consent_id = $2, consent_in_force = true, armed_at = now(), arm_reason = 'incident 7'
		WHERE id = $1`, f.tenant, consent)
	require.NoError(t, err)

	// The consent an armed tenant rests on cannot be withdrawn under it.
	_, err = pool.Exec(ctx, "UPDATE tenant_consents SET withdrawn_at = now(), withdraw_reason = 'x' WHERE id = $1", consent)
	requireViolation(t, err, "tenants_consent_fk")

	// Nor can a tenant point at another tenant's consent.
	var other string
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO tenants (name) VALUES ('other') RETURNING id").Scan(&other))
	_, err = pool.Exec(ctx, "UPDATE tenants SET consent_id = $2, consent_in_force = true, armed_at = now(), arm_reason = 'x' WHERE id = $1", other, consent)
	requireViolation(t, err, "tenants_consent_fk")

	// Nor can arming skip the in-force flag.
	_, err = pool.Exec(ctx, "UPDATE tenants SET consent_id = $2, consent_in_force = NULL, armed_at = now(), arm_reason = 'x' WHERE id = $1", other, consent)
	requireViolation(t, err, "tenants_consent_pair")
}

func TestSchema_SessionLongerThan120MinutesFails(t *testing.T) {
	pool := testenv.Pool(t)
	f := newFixture(t, pool)
	ctx := context.Background()
	insert := `INSERT INTO support_sessions (tenant_id, agent_id, operator_id, token_hash, reason, created_at, expires_at)
		VALUES ($1, $2, $3, sha256('t'), 'debug', now(), now() + $4::interval)`

	_, err := pool.Exec(ctx, insert, f.tenant, f.agent, f.operator, "121 minutes")
	requireViolation(t, err, "support_sessions_ttl_cap")

	_, err = pool.Exec(ctx, insert, f.tenant, f.agent, f.operator, "120 minutes")
	require.NoError(t, err)
}

func TestSchema_OneLiveSessionPerAgent(t *testing.T) {
	pool := testenv.Pool(t)
	f := newFixture(t, pool)
	ctx := context.Background()
	insert := `INSERT INTO support_sessions (tenant_id, agent_id, operator_id, token_hash, reason, expires_at)
		VALUES ($1, $2, $3, sha256(gen_random_uuid()::text::bytea), 'debug', now() + interval '30 minutes') RETURNING id`

	var first string
	require.NoError(t, pool.QueryRow(ctx, insert, f.tenant, f.agent, f.operator).Scan(&first))
	_, err := pool.Exec(ctx, insert, f.tenant, f.agent, f.operator)
	requireViolation(t, err, "support_sessions_one_live_per_agent")

	// Once the first has ended, a new one may open.
	_, err = pool.Exec(ctx, "UPDATE support_sessions SET ended_at = now(), end_reason = 'deactivated' WHERE id = $1", first)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, insert, f.tenant, f.agent, f.operator)
	require.NoError(t, err)
}

func TestSchema_SessionAgentMustBelongToTenant(t *testing.T) {
	pool := testenv.Pool(t)
	f := newFixture(t, pool)
	ctx := context.Background()
	var other string
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO tenants (name) VALUES ('other') RETURNING id").Scan(&other))
	_, err := pool.Exec(ctx, `INSERT INTO support_sessions (tenant_id, agent_id, operator_id, token_hash, reason, expires_at)
		VALUES ($1, $2, $3, sha256('t'), 'debug', now() + interval '30 minutes')`, other, f.agent, f.operator)
	requireViolation(t, err, "support_sessions_agent_id_tenant_id_fkey")
}

func TestSchema_EventsAreAppendOnly(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `INSERT INTO events (seq, id, occurred_at, action, payload, canonical, prev_hash, hash)
		VALUES (1, gen_random_uuid(), now(), 'test', '{}', '{}', sha256(''), sha256('x'))`)
	require.NoError(t, err)
	// New events keep the bytes their hash covers.
	_, err = pool.Exec(ctx, `INSERT INTO events (seq, id, occurred_at, action, payload, prev_hash, hash)
		VALUES (2, gen_random_uuid(), now(), 'test', '{}', sha256(''), sha256('x'))`)
	requireViolation(t, err, "events_canonical_kept")

	for name, stmt := range map[string]string{
		"update":   "UPDATE events SET action = 'forged'",
		"delete":   "DELETE FROM events",
		"truncate": "TRUNCATE events",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := pool.Exec(ctx, stmt)
			require.Error(t, err)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, "42501", pgErr.Code)
			assert.Contains(t, pgErr.Message, "append-only")
		})
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action = 'test'").Scan(&n))
	assert.Equal(t, 1, n, "the row is still there, unchanged")
}

func TestSchema_RecordedHeadsAreKept(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	// A nightly run is claimed, then records its head when it finishes.
	_, err := pool.Exec(ctx, "INSERT INTO reconcile_runs (scheduled_for, node) VALUES ('2026-11-26T02:00:00Z', 'n1')")
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE reconcile_runs SET finished_at = now(), clean = true, head_seq = 7, head_hash = sha256('h'), head_at = now()
		WHERE scheduled_for = '2026-11-26T02:00:00Z'`)
	require.NoError(t, err)
	// A run on demand has no schedule; a nightly one must have one.
	_, err = pool.Exec(ctx, "INSERT INTO reconcile_runs (kind, node, head_seq, head_hash, head_at) VALUES ('api', 'n1', 9, sha256('i'), now())")
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "INSERT INTO reconcile_runs (kind, node) VALUES ('nightly', 'n1')")
	requireViolation(t, err, "reconcile_runs_nightly_scheduled")
	_, err = pool.Exec(ctx, "INSERT INTO reconcile_runs (kind, node, head_seq) VALUES ('cli', 'n1', 3)")
	requireViolation(t, err, "reconcile_runs_head")

	for name, stmt := range map[string]string{
		"change a head": "UPDATE reconcile_runs SET head_seq = 1 WHERE head_seq = 7",
		"drop a head":   "UPDATE reconcile_runs SET head_seq = NULL, head_hash = NULL, head_at = NULL WHERE head_seq = 9",
		"delete":        "DELETE FROM reconcile_runs",
		"truncate":      "TRUNCATE reconcile_runs",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := pool.Exec(ctx, stmt)
			require.Error(t, err)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, "42501", pgErr.Code)
		})
	}
	_, err = pool.Exec(ctx, "UPDATE reconcile_runs SET mismatches = 0 WHERE head_seq = 7")
	require.NoError(t, err, "what is not the head may still be set")
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM reconcile_runs WHERE head_seq IN (7, 9)").Scan(&n))
	assert.Equal(t, 2, n)
}
