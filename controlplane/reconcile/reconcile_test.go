package reconcile_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/mail"
	"github.com/argus-remote/argus/controlplane/reconcile"
	"github.com/argus-remote/argus/internal/smtptest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/migrations"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// history writes n audited actions from many goroutines at once.
func history(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, audit.Write(context.Background(), pool, audit.Entry{
				Actor: "operator:alice", OperatorID: "6f1c5a8e-5a4e-4f7e-9a43-1d2b3c4d5e6f", Action: "test.action", Outcome: audit.Success,
				ClientIP: "10.0.0." + strconv.Itoa(i%250+1), Reason: "reason " + strconv.Itoa(i),
				Detail: map[string]any{"i": i, "path": "/etc/argus/x.conf", "nested": map[string]any{"z": 1, "a": []any{1, "two"}}},
			}))
		}()
	}
	wg.Wait()
}

func window() (time.Time, time.Time) { return time.Now().Add(-time.Hour), time.Now().Add(time.Minute) }

// tamper runs statements as a superuser with triggers off, as an attacker
// with database access would.
func tamper(t *testing.T, pool *pgxpool.Pool, stmt string, args ...any) {
	t.Helper()
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(context.Background(), "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		_, err := tx.Exec(context.Background(), stmt, args...)
		return err
	})
	require.NoError(t, err)
}

func nthEvent(t *testing.T, pool *pgxpool.Pool, seq int) string {
	t.Helper()
	var id string
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT id FROM events WHERE seq = $1", seq).Scan(&id))
	return id
}

func kinds(r reconcile.Report, id string) []string {
	var out []string
	for _, m := range r.Mismatches {
		if m.ID == id {
			out = append(out, m.Kind)
		}
	}
	return out
}

func TestReconcile_CleanHistoryFromConcurrentWriters(t *testing.T) {
	pool := testenv.Pool(t)
	history(t, pool, 60)
	from, to := window()
	r, err := reconcile.Run(context.Background(), pool, from, to)
	require.NoError(t, err)
	assert.True(t, r.Clean, "%s", r.Text())
	assert.Equal(t, 60, r.AuditRows)
	assert.Equal(t, 60, r.Events)
}

func TestReconcile_ReportsEachTampering(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	history(t, pool, 12)

	// Each tampering hits a different row; the report names each.
	deletedLog := nthEvent(t, pool, 2)
	tamper(t, pool, "DELETE FROM audit_log WHERE id = $1", deletedLog)

	editedLog := nthEvent(t, pool, 4)
	tamper(t, pool, "UPDATE audit_log SET outcome = 'denied', reason = 'nothing to see' WHERE id = $1", editedLog)

	deletedEvent := nthEvent(t, pool, 6)
	tamper(t, pool, "DELETE FROM events WHERE id = $1", deletedEvent)
	afterDeleted := nthEvent(t, pool, 7)

	editedEvent := nthEvent(t, pool, 9)
	tamper(t, pool, `UPDATE events SET payload = jsonb_set(payload, '{reason}', '"rewritten"') WHERE id = $1`, editedEvent)

	forged := "00000000-0000-4000-8000-00000000f0f0"
	tamper(t, pool, `INSERT INTO events (seq, id, occurred_at, action, payload, canonical, prev_hash, hash)
		SELECT seq + 1, $1::uuid, now(), 'agent.enroll', p, convert_to(p::text, 'UTF8'), hash, sha256('forged')
		FROM events, jsonb_build_object('id', $1::text, 'action', 'agent.enroll') AS p ORDER BY seq DESC LIMIT 1`, forged)

	from, to := window()
	r, err := reconcile.Run(ctx, pool, from, to)
	require.NoError(t, err)
	require.False(t, r.Clean)
	t.Log(r.Text())

	assert.Contains(t, kinds(r, deletedLog), reconcile.MissingAuditLog, "deleted audit_log row")
	assert.Contains(t, kinds(r, editedLog), reconcile.FieldDiffers, "edited audit_log row")
	assert.Contains(t, kinds(r, deletedEvent), reconcile.MissingEvent, "deleted event")
	assert.Contains(t, kinds(r, afterDeleted), reconcile.SequenceGap, "the gap it leaves")
	assert.Contains(t, kinds(r, afterDeleted), reconcile.BrokenChain, "the link it breaks")
	assert.Contains(t, kinds(r, editedEvent), reconcile.BadHash, "edited event payload")
	assert.Contains(t, kinds(r, editedEvent), reconcile.FieldDiffers)
	assert.Contains(t, kinds(r, forged), reconcile.MissingAuditLog, "forged event")
	assert.Contains(t, kinds(r, forged), reconcile.BadHash)

	for _, m := range r.Mismatches {
		if m.ID == editedLog {
			assert.Contains(t, m.Detail, "outcome")
			assert.Contains(t, m.Detail, "reason")
		}
	}
}

func TestNightly_MailsMismatchesNotCleanRuns(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	history(t, pool, 5)
	srv := smtptest.Start(t, smtptest.Options{TLS: true, Username: "argus", Password: "s3cret"})
	port, _ := strconv.Atoi(srv.Port)
	sender, err := mail.New(mail.Config{Host: srv.Host, Port: port, From: "argus@ops.example", To: []string{"security@ops.example", "sre@ops.example"},
		Username: "argus", Password: "s3cret", StartTLS: true, CAFile: srv.CAFile}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	n := &reconcile.Nightly{Pool: pool, Mail: sender, Overlap: time.Hour, Node: "n1", Log: slog.New(slog.DiscardHandler), MailAttempts: 1}

	at := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	r, ran, err := n.RunScheduled(ctx, at)
	require.NoError(t, err)
	require.True(t, ran)
	assert.True(t, r.Clean)
	select {
	case m := <-srv.Messages:
		t.Fatalf("a clean run sent mail: %s", m.Data)
	default:
	}
	_, ran, err = (&reconcile.Nightly{Pool: pool, Overlap: time.Hour, Node: "n2", Log: slog.New(slog.DiscardHandler)}).RunScheduled(ctx, at)
	require.NoError(t, err)
	assert.False(t, ran, "a second server does not run the same scheduled reconciliation")

	victim := nthEvent(t, pool, 3)
	tamper(t, pool, "DELETE FROM audit_log WHERE id = $1", victim)
	r, ran, err = n.RunScheduled(ctx, at.Add(time.Second))
	require.NoError(t, err)
	require.True(t, ran)
	require.False(t, r.Clean)
	select {
	case m := <-srv.Messages:
		assert.ElementsMatch(t, []string{"security@ops.example", "sre@ops.example"}, m.To)
		assert.Contains(t, m.Data, "Subject: ARGUS audit reconciliation: ")
		assert.Contains(t, m.Data, victim, "the mail names the row")
		assert.Contains(t, m.Data, reconcile.MissingAuditLog)
		assert.Contains(t, m.Data, fmt.Sprintf("chain head: seq %d hash %s", r.Head.Seq, r.Head.Hash), "the mail keeps the head elsewhere")
	case <-time.After(10 * time.Second):
		t.Fatal("no mail for a mismatch")
	}

	// Each run is audited twice, with its window and outcome.
	var logRows, events int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = 'audit.reconcile'").Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action = 'audit.reconcile'").Scan(&events))
	assert.Equal(t, 2, logRows)
	assert.Equal(t, 2, events)
	var outcomes string
	require.NoError(t, pool.QueryRow(ctx, "SELECT string_agg(outcome, ',' ORDER BY occurred_at) FROM audit_log WHERE action = 'audit.reconcile'").Scan(&outcomes))
	assert.Equal(t, "success,failure", outcomes)

	// Each run recorded the head it reached.
	var nightly, heads int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*), count(head_seq) FROM reconcile_runs WHERE kind = 'nightly' AND finished_at IS NOT NULL").Scan(&nightly, &heads))
	assert.Equal(t, 2, nightly)
	assert.Equal(t, 2, heads)
}

// The nightly run checks the heads that runs on demand recorded, and they
// the nightly run's: one chain of heads, whoever ran.
func TestNightly_ChecksTheHeadsRunsOnDemandRecorded(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	history(t, pool, 6)
	from, to := window()
	require.True(t, verified(t, pool, from, to).Clean)
	ownerDeletes(t, pool,
		"DELETE FROM events WHERE seq > (SELECT max(seq) - 3 FROM events)",
		"DELETE FROM audit_log WHERE id NOT IN (SELECT id FROM events)")

	srv := smtptest.Start(t, smtptest.Options{})
	port, _ := strconv.Atoi(srv.Port)
	sender, err := mail.New(mail.Config{Host: srv.Host, Port: port, From: "argus@ops.example", To: []string{"security@ops.example"}}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	n := &reconcile.Nightly{Pool: pool, Mail: sender, Overlap: time.Hour, Node: "n1", Log: slog.New(slog.DiscardHandler), MailAttempts: 1}
	r, ran, err := n.RunScheduled(ctx, time.Now().Add(time.Minute).UTC().Truncate(time.Second))
	require.NoError(t, err)
	require.True(t, ran)
	assert.True(t, hasKind(r, reconcile.ChainTruncated), "%s", r.Text())
	select {
	case m := <-srv.Messages:
		assert.Contains(t, m.Data, reconcile.ChainTruncated)
		assert.Contains(t, m.Data, "chain head: seq 4 ")
	case <-time.After(10 * time.Second):
		t.Fatal("no mail for a truncated chain")
	}

	// And a run on demand after it checks the nightly run's head.
	r = verified(t, pool, from, time.Now().Add(time.Minute))
	assert.True(t, hasKind(r, reconcile.ChainTruncated), "the lost head stays reported")
}

func TestMail_FailureIsCountedAndReturned(t *testing.T) {
	sender, err := mail.New(mail.Config{Host: "127.0.0.1", Port: 1, From: "a@b.example", To: []string{"c@d.example"}}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	err = sender.Send(context.Background(), "s", "b", 3, time.Millisecond)
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), "3 attempts"), err.Error())
	assert.Equal(t, int64(3), sender.Failures())
	assert.Equal(t, int64(0), sender.Sent())
}

func TestNightly_Schedule(t *testing.T) {
	n := &reconcile.Nightly{At: 2 * time.Hour}
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	assert.Equal(t, at("2026-11-26T02:00:00Z"), n.Next(at("2026-11-25T22:00:00Z")))
	assert.Equal(t, at("2026-11-25T02:00:00Z"), n.Next(at("2026-11-25T01:59:59Z")))
	assert.Equal(t, at("2026-11-26T02:00:00Z"), n.Next(at("2026-11-25T02:00:00Z")))
}

// Events written before migration 0006 keep no hashed bytes: their hash is
// recomputed from the payload, as it always was, and they still verify,
// with the newer events chained after them.
func TestReconcile_EventsFromBeforeTheirBytesWereKeptStillVerify(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.EmptyDatabase(t))
	require.NoError(t, err)
	defer pool.Close()
	_, err = migrations.ApplyTo(ctx, pool, 5)
	require.NoError(t, err)

	// As the code before 0006 wrote them.
	prev := make([]byte, 32)
	for i := range 5 {
		id, at := uuid.NewString(), time.Now().UTC().Truncate(time.Microsecond)
		ev := audit.Event{ID: id, OccurredAt: at.Format(time.RFC3339Nano), Actor: "operator:alice", Action: "test.legacy", Outcome: audit.Success,
			OperatorID: "6f1c5a8e-5a4e-4f7e-9a43-1d2b3c4d5e6f", ClientIP: "10.0.0.1", Reason: "before <0006>",
			Detail: map[string]any{"i": i, "half": 0.5, "path": "/etc/argus/x.conf", "nested": map[string]any{"z": 1, "a": []any{1, "two"}}}}
		payload, err := audit.Canonical(ev)
		require.NoError(t, err)
		hash := audit.ChainHash(prev, payload)
		_, err = pool.Exec(ctx, `INSERT INTO audit_log (id, occurred_at, actor, action, outcome, client_ip, reason, detail)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb || jsonb_build_object('operator_id', $9::text))`,
			id, at, ev.Actor, ev.Action, ev.Outcome, ev.ClientIP, ev.Reason, ev.Detail, ev.OperatorID)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `INSERT INTO events (seq, id, occurred_at, action, payload, prev_hash, hash) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)`,
			i+1, id, at, ev.Action, string(payload), prev, hash)
		require.NoError(t, err)
		prev = hash
	}
	// And a nightly run of the time, which the migration keeps.
	_, err = pool.Exec(ctx, "INSERT INTO reconcile_runs (scheduled_for, node, finished_at, clean, mismatches) VALUES (now() - interval '1 day', 'n0', now(), true, 0)")
	require.NoError(t, err)
	_, err = migrations.Apply(ctx, pool)
	require.NoError(t, err)
	history(t, pool, 5)

	var kept int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(canonical) FROM events").Scan(&kept))
	require.Equal(t, 5, kept, "the newer events keep their bytes, the older ones none")
	from, to := window()
	r, err := reconcile.Run(ctx, pool, from, to)
	require.NoError(t, err)
	assert.True(t, r.Clean, "%s", r.Text())
	assert.Equal(t, 10, r.Events)
	n := &reconcile.Nightly{Pool: pool, Overlap: time.Hour, Node: "n1", Log: slog.New(slog.DiscardHandler)}
	r, ran, err := n.RunScheduled(ctx, time.Now().Add(time.Minute).UTC().Truncate(time.Second))
	require.NoError(t, err)
	require.True(t, ran)
	assert.True(t, r.Clean, "%s", r.Text())
}

// TestReconcile_ReportsACommandNeverTerminated guards against two trails
// that agree on a command's request and say nothing of its end: a command
// still requested well past its deadline is reported.
func TestReconcile_ReportsACommandNeverTerminated(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var session string
	require.NoError(t, pool.QueryRow(ctx, `WITH o AS (INSERT INTO operators (name) VALUES ('alice') RETURNING id),
		t AS (INSERT INTO tenants (name) VALUES ('acme') RETURNING id),
		a AS (INSERT INTO agents (tenant_id, name, secret_hash) SELECT t.id, 'gw', decode(repeat('00', 32), 'hex') FROM t RETURNING id, tenant_id)
		INSERT INTO support_sessions (tenant_id, agent_id, operator_id, token_hash, reason, expires_at)
		SELECT a.tenant_id, a.id, o.id, decode(repeat('01', 32), 'hex'), 'INC-1', now() + interval '30 minutes' FROM a, o
		RETURNING id`).Scan(&session))
	insert := func(deadline string) string {
		var id string
		require.NoError(t, pool.QueryRow(ctx, `INSERT INTO commands (session_id, name, args_digest, status, deadline)
			VALUES ($1, 'ping', decode(repeat('02', 32), 'hex'), 'requested', now() + $2::interval) RETURNING id`, session, deadline).Scan(&id))
		return id
	}
	overdue := insert("-5 minutes")
	insert("20 seconds") // still running: not reported

	r, err := reconcile.Run(ctx, pool, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
	require.NoError(t, err)
	require.Len(t, r.Mismatches, 1, "%v", r.Mismatches)
	assert.Equal(t, reconcile.CommandUnterminated, r.Mismatches[0].Kind)
	assert.Equal(t, overdue, r.Mismatches[0].ID)
}

func TestReport_AWindowWithNothingAtAllSaysSoNotAllClear(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	from, to := window()
	r, err := reconcile.Run(ctx, pool, from, to)
	require.NoError(t, err)
	require.True(t, r.Clean, "nothing disagrees")
	assert.Contains(t, r.Text(), "No audited actions in this window")
	assert.NotContains(t, r.Text(), "All clear")
	assert.NotContains(t, r.Subject(), "all clear")

	// Once the window holds rows, a clean run is all clear again.
	history(t, pool, 3)
	r, err = reconcile.Run(ctx, pool, from, to)
	require.NoError(t, err)
	require.True(t, r.Clean, "%s", r.Text())
	assert.Contains(t, r.Text(), "All clear")
	assert.NotContains(t, r.Text(), "No audited actions")
}
