package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/mail"
	"github.com/argus-remote/argus/internal/telemetry"
)

var mismatchCounter = telemetry.NewInstrument("argus/reconcile", func(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("argus_reconcile_mismatches",
		metric.WithDescription("Mismatches found by audit reconciliation runs."))
})

func mismatchCount() metric.Int64Counter { return mismatchCounter.Get() }

// Subject is the mail subject for a report.
func (r Report) Subject() string {
	if r.Clean && r.Nothing() {
		return "ARGUS audit reconciliation: no audited actions in the window"
	}
	if r.Clean {
		return "ARGUS audit reconciliation: all clear"
	}
	return fmt.Sprintf("ARGUS audit reconciliation: %d mismatch(es)", len(r.Mismatches))
}

// Nightly runs the reconciliation once a day at a fixed UTC time.
type Nightly struct {
	Pool *pgxpool.Pool
	// Mail, when set, is told of every mismatch (and, with AllClear, of
	// clean runs too).
	Mail     *mail.Sender
	AllClear bool
	// At is the time of day, UTC, as an offset from midnight.
	At time.Duration
	// Overlap widens the 24-hour window backwards, so nothing falls
	// between two runs.
	Overlap time.Duration
	Node    string
	Log     *slog.Logger
	// MailAttempts and MailBackoff bound delivery retries (5, 1 minute).
	MailAttempts int
	MailBackoff  time.Duration
}

// Next returns the first scheduled run after now.
func (n *Nightly) Next(now time.Time) time.Time {
	now = now.UTC()
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	next := day.Add(n.At)
	if !next.After(now) {
		next = next.Add(24 * time.Hour)
	}
	return next
}

// Loop runs the schedule until ctx is done.
func (n *Nightly) Loop(ctx context.Context) {
	for {
		next := n.Next(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		if _, _, err := n.RunScheduled(ctx, next); err != nil {
			n.Log.Error("nightly audit reconciliation", "err", err)
		}
	}
}

// RunScheduled runs the reconciliation due at `at`, unless another server
// has claimed it. It reports whether this node ran it.
func (n *Nightly) RunScheduled(ctx context.Context, at time.Time) (Report, bool, error) {
	tag, err := n.Pool.Exec(ctx, "INSERT INTO reconcile_runs (scheduled_for, node, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", at, n.Node, KindNightly)
	if err != nil {
		return Report{}, false, fmt.Errorf("claim run: %w", err)
	}
	if tag.RowsAffected() == 0 {
		n.Log.Info("nightly audit reconciliation already claimed by another server", "scheduled_for", at)
		return Report{}, false, nil
	}
	r, err := Run(ctx, n.Pool, at.Add(-24*time.Hour-n.Overlap), at)
	if err != nil {
		return Report{}, true, err
	}
	if err := Record(ctx, n.Pool, r, audit.Entry{Actor: "system"}, Source{Kind: KindNightly, Node: n.Node, ScheduledFor: at}); err != nil {
		return r, true, err
	}
	attrs := []any{"clean", r.Clean, "mismatches", len(r.Mismatches), "audit_rows", r.AuditRows, "events", r.Events}
	if r.Head != nil {
		attrs = append(attrs, "head_seq", r.Head.Seq, "head_hash", r.Head.Hash)
	}
	n.Log.Info("nightly audit reconciliation", attrs...)
	return r, true, n.Notify(ctx, r)
}

// Notify mails a report with mismatches (or a clean one, with AllClear).
func (n *Nightly) Notify(ctx context.Context, r Report) error {
	if n.Mail == nil || (r.Clean && !n.AllClear) {
		return nil
	}
	attempts, backoff := n.MailAttempts, n.MailBackoff
	if attempts == 0 {
		attempts = 5
	}
	if backoff == 0 {
		backoff = time.Minute
	}
	return n.Mail.Send(ctx, r.Subject(), r.Text(), attempts, backoff)
}
