package reconcile

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
)

// Head is a point of the events chain: an event's sequence number and
// hash, and when the event occurred.
type Head struct {
	Seq  int64     `json:"seq"`
	Hash string    `json:"hash"` // hex
	At   time.Time `json:"at"`
}

// RecordedHead is a head as an earlier run recorded it.
type RecordedHead struct {
	Head
	Run        int64     `json:"run"` // reconcile_runs.id
	Kind       string    `json:"kind"`
	RecordedAt time.Time `json:"recorded_at"`
}

func (h RecordedHead) by() string {
	return fmt.Sprintf("run %d (%s, %s)", h.Run, h.Kind, h.RecordedAt.UTC().Format(time.RFC3339))
}

// Who asks for a run.
const (
	KindNightly = "nightly" // the scheduled run (Nightly)
	KindCLI     = "cli"     // argus-server audit reconcile
	KindAPI     = "api"     // POST /v1/audit/verify
)

// Source says who ran a reconciliation.
type Source struct {
	Kind string
	Node string
	// ScheduledFor is, for a nightly run, the run it claimed.
	ScheduledFor time.Time
}

const headColumns = "id, kind, COALESCE(finished_at, started_at), head_seq, head_hash, head_at"

func scanHead(row pgx.Row) (RecordedHead, error) {
	var h RecordedHead
	var hash []byte
	err := row.Scan(&h.Run, &h.Kind, &h.RecordedAt, &h.Seq, &hash, &h.At)
	h.Hash, h.At = hex.EncodeToString(hash), h.At.UTC()
	return h, err
}

// headAtOrBefore returns the newest head recorded at or before seq (nil
// when there is none): the one a run reaching seq extends.
func headAtOrBefore(ctx context.Context, tx pgx.Tx, seq int64) (*RecordedHead, error) {
	h, err := scanHead(tx.QueryRow(ctx, "SELECT "+headColumns+` FROM reconcile_runs
		WHERE head_seq <= $1 ORDER BY head_seq DESC, id DESC LIMIT 1`, seq))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("recorded heads: %w", err)
	}
	return &h, nil
}

// checkHeads checks that the chain still holds the heads earlier runs
// recorded: every one in the span this run verified, every one whose
// event lies in the window, and the newest of all, wherever it is. Rows
// deleted from the end of both trails leave no gap behind them; only a
// recorded head shows the chain once went further.
func (r *Report) checkHeads(ctx context.Context, tx pgx.Tx, events []eventRow, sp span) error {
	rows, err := tx.Query(ctx, "SELECT "+headColumns+` FROM reconcile_runs
		WHERE head_seq BETWEEN $1 AND $2 OR head_at BETWEEN $3 AND $4
		   OR id = (SELECT id FROM reconcile_runs WHERE head_seq IS NOT NULL ORDER BY head_seq DESC, id DESC LIMIT 1)
		ORDER BY head_seq, id`, sp.start, sp.end, r.From, r.To)
	if err != nil {
		return fmt.Errorf("recorded heads: %w", err)
	}
	heads, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RecordedHead, error) { return scanHead(row) })
	if err != nil {
		return fmt.Errorf("recorded heads: %w", err)
	}
	bySeq := make(map[int64][]byte, len(events))
	for _, e := range events {
		bySeq[e.seq] = e.hash
	}
	var end *int64 // the chain's last event, read when needed
	seen := map[Head]bool{}
	emptyReported := false
	for _, h := range heads {
		if seen[h.Head] {
			continue // several runs may record the same head
		}
		seen[h.Head] = true
		if r.Events == 0 && r.AuditRows == 0 && !h.At.Before(r.From) && !h.At.After(r.To) && !emptyReported {
			emptyReported = true
			r.add(EmptyWindow, "", h.Seq, "the window holds no row, yet %s verified event %d in it (at %s)",
				h.by(), h.Seq, h.At.Format(time.RFC3339Nano))
		}
		hash, ok := bySeq[h.Seq]
		if !ok {
			err := tx.QueryRow(ctx, "SELECT hash FROM events WHERE seq = $1", h.Seq).Scan(&hash)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			ok = err == nil
		}
		switch {
		case !ok:
			if end == nil {
				end = new(int64)
				if err := tx.QueryRow(ctx, "SELECT COALESCE(max(seq), 0) FROM events").Scan(end); err != nil {
					return err
				}
			}
			ends := fmt.Sprintf("the chain ends at %d", *end)
			if *end == 0 {
				ends = "the chain is empty"
			}
			r.add(ChainTruncated, "", h.Seq, "%s verified the chain up to event %d (hash %s); there is no event %d now, and %s",
				h.by(), h.Seq, h.Hash, h.Seq, ends)
		case hex.EncodeToString(hash) != h.Hash:
			r.add(ChainTruncated, "", h.Seq, "event %d is not the one %s verified: its hash was %s and is %x now",
				h.Seq, h.by(), h.Hash, hash)
		}
	}
	return nil
}

// Record audits a reconciliation run (both rows, with its window, outcome
// and head) and records the head it reached, in one transaction.
func Record(ctx context.Context, pool *pgxpool.Pool, r Report, by audit.Entry, src Source) error {
	mismatchCount().Add(ctx, int64(len(r.Mismatches)))
	by.Action = "audit.reconcile"
	by.Outcome = audit.Success
	if !r.Clean {
		by.Outcome = audit.Failure
	}
	by.Detail = map[string]any{
		"from": r.From.Format(time.RFC3339Nano), "to": r.To.Format(time.RFC3339Nano), "kind": src.Kind,
		"audit_rows": r.AuditRows, "events": r.Events, "mismatches": len(r.Mismatches), "clean": r.Clean,
	}
	var (
		seq  *int64
		hash []byte
		at   *time.Time
	)
	if h := r.Head; h != nil {
		var err error
		if hash, err = hex.DecodeString(h.Hash); err != nil {
			return fmt.Errorf("reconcile: head hash: %w", err)
		}
		seq, at = &h.Seq, &h.At
		by.Detail["head_seq"], by.Detail["head_hash"] = h.Seq, h.Hash
	}
	if e := r.Extends; e != nil {
		by.Detail["extends_seq"] = e.Seq
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := audit.Record(ctx, tx, by); err != nil {
			return err
		}
		args := []any{src.Node, r.From, r.To, r.AuditRows, r.Events, r.Clean, len(r.Mismatches), seq, hash, at}
		if src.Kind == KindNightly {
			tag, err := tx.Exec(ctx, `UPDATE reconcile_runs SET node = $1, window_from = $2, window_to = $3, audit_rows = $4, events = $5,
				clean = $6, mismatches = $7, head_seq = $8, head_hash = $9, head_at = $10, finished_at = now() WHERE scheduled_for = $11`,
				append(args, src.ScheduledFor)...)
			if err == nil && tag.RowsAffected() == 0 {
				err = fmt.Errorf("no claimed run scheduled for %s", src.ScheduledFor.UTC().Format(time.RFC3339))
			}
			if err != nil {
				return fmt.Errorf("reconcile: record run: %w", err)
			}
			return nil
		}
		if _, err := tx.Exec(ctx, `INSERT INTO reconcile_runs (kind, node, window_from, window_to, audit_rows, events, clean, mismatches,
			head_seq, head_hash, head_at, finished_at) VALUES ($11, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())`,
			append(args, src.Kind)...); err != nil {
			return fmt.Errorf("reconcile: record run: %w", err)
		}
		return nil
	})
}

// headLines renders where a run left the chain.
func (r Report) headLines() string {
	var b bytes.Buffer
	if r.Head == nil {
		b.WriteString("chain head: none (the chain is empty)\n")
		return b.String()
	}
	fmt.Fprintf(&b, "chain head: seq %d hash %s (event at %s)\n", r.Head.Seq, r.Head.Hash, r.Head.At.Format(time.RFC3339Nano))
	if e := r.Extends; e != nil {
		fmt.Fprintf(&b, "verified from seq %d, the head %s recorded\n", e.Seq, e.by())
	} else {
		b.WriteString("extends no earlier head: none was recorded at or before it\n")
	}
	return b.String()
}
