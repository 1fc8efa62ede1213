// Package reconcile proves the audit: it compares audit_log with events
// over a time window and verifies the events hash chain, so that a row
// deleted, edited or forged by someone with database access shows up as a
// mismatch naming the row and what differs.
//
// Each run records the head of the chain it reached (reconcile_runs), and
// each run starts its verification of the chain from the newest head
// recorded before its own and checks that every head recorded before
// still holds: rows deleted from the end of both trails leave no gap, but
// they take a recorded head with them.
package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
)

// Mismatch kinds.
const (
	MissingEvent    = "missing_event"     // an audit_log row without its event
	MissingAuditLog = "missing_audit_log" // an event without its audit_log row
	FieldDiffers    = "field_differs"     // both exist but say different things
	BadHash         = "bad_hash"          // an event's hash does not match its content
	BrokenChain     = "broken_chain"      // an event does not link to the one before
	SequenceGap     = "sequence_gap"      // a sequence number is missing
	ChainTruncated  = "chain_truncated"   // a head an earlier run recorded is gone or changed
	NoEvents        = "no_events"         // the window has audit_log rows but no event at all
	EmptyWindow     = "empty_window"      // the window has no row at all, though an earlier run verified one in it
	// CommandUnterminated is a command still "requested" well past its
	// deadline: no completion and no interruption was ever recorded.
	CommandUnterminated = "command_unterminated"
)

// unterminatedAfter is how long past its deadline a command may stay
// requested before reconciliation reports it: the servers mark such a
// command interrupted within seconds.
const unterminatedAfter = time.Minute

// Mismatch is one discrepancy.
type Mismatch struct {
	Kind   string `json:"kind"`
	ID     string `json:"id,omitempty"`
	Seq    int64  `json:"seq,omitempty"`
	Detail string `json:"detail"`
}

// Report is the outcome of one reconciliation.
type Report struct {
	From       time.Time  `json:"from"`
	To         time.Time  `json:"to"`
	AuditRows  int        `json:"audit_rows"`
	Events     int        `json:"events"`
	Mismatches []Mismatch `json:"mismatches"`
	Clean      bool       `json:"clean"`
	// Head is where this run left the chain: the newest event of the
	// window (or, for a window without events, the newest before it),
	// with every event from Extends to it verified. Kept elsewhere (the
	// mail, a ticket), it shows later whether the chain still reaches it.
	Head *Head `json:"head,omitempty"`
	// Extends is the head an earlier run recorded that this run's
	// verification of the chain started from: the newest at or before
	// Head. None for the first run.
	Extends *RecordedHead `json:"extends,omitempty"`
}

type auditRow struct {
	id                                       string
	at                                       time.Time
	actor, action, outcome, reason, clientIP string
	tenant, agent, session                   string
	detail                                   []byte // JSON
}

type eventRow struct {
	seq            int64
	id             string
	at             time.Time
	action         string
	payload        []byte // JSON, as jsonb spells it
	canonical      []byte // the bytes the hash covers; nil before migration 0006
	prevHash, hash []byte
}

// span is what a run reads of the chain, by sequence number: the window's
// events [lo, hi] (none when lo > hi), verified from start to end (start
// at or before lo, back to the head it extends; end the window's last
// event, or the last before an empty window), with the event before start
// and the one after end read to check the links at both ends.
type span struct {
	lo, hi, start, end int64
}

func (s span) inWindow(seq int64) bool { return seq >= s.lo && seq <= s.hi }
func (s span) verified(seq int64) bool { return seq >= s.start && seq <= s.end }

// Run reconciles the window [from, to].
func Run(ctx context.Context, pool *pgxpool.Pool, from, to time.Time) (Report, error) {
	r := Report{From: from.UTC(), To: to.UTC(), Mismatches: []Mismatch{}}
	// One snapshot for both tables and the recorded heads, so a write
	// landing between two reads is not mistaken for a missing row, and a
	// head recorded by a run that saw newer rows is not seen without them.
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		sp, err := windowSpan(ctx, tx, from, to)
		if err != nil {
			return err
		}
		if sp.end > 0 {
			if r.Extends, err = headAtOrBefore(ctx, tx, sp.end); err != nil {
				return err
			}
			if r.Extends != nil && r.Extends.Seq < sp.start {
				sp.start = r.Extends.Seq
			}
		}
		events, err := loadEvents(ctx, tx, sp)
		if err != nil {
			return err
		}
		// Rows written within microseconds of an edge may fall either side
		// of it; the window's events bring their audit rows along.
		var ids []string
		for _, e := range events {
			if sp.inWindow(e.seq) {
				ids = append(ids, e.id)
			}
		}
		logs, err := loadAudit(ctx, tx, from, to, ids)
		if err != nil {
			return err
		}
		r.AuditRows = len(logs)
		r.check(logs, events, sp)
		for _, e := range events {
			if e.seq == sp.end {
				r.Head = &Head{Seq: e.seq, Hash: fmt.Sprintf("%x", e.hash), At: e.at.UTC()}
			}
		}
		if err := r.checkHeads(ctx, tx, events, sp); err != nil {
			return err
		}
		return r.checkCommands(ctx, tx, from, to)
	})
	if err != nil {
		return Report{}, fmt.Errorf("reconcile: %w", err)
	}
	r.Clean = len(r.Mismatches) == 0
	return r, nil
}

// windowSpan finds the window's events and where verification ends.
func windowSpan(ctx context.Context, tx pgx.Tx, from, to time.Time) (span, error) {
	var lo, hi *int64
	if err := tx.QueryRow(ctx, "SELECT min(seq), max(seq) FROM events WHERE occurred_at BETWEEN $1 AND $2", from, to).Scan(&lo, &hi); err != nil {
		return span{}, err
	}
	if lo != nil {
		return span{lo: *lo, hi: *hi, start: *lo, end: *hi}, nil
	}
	// No event in the window: check the chain around it, from the newest
	// event before it.
	var before int64
	err := tx.QueryRow(ctx, "SELECT seq FROM events WHERE occurred_at < $1 ORDER BY occurred_at DESC, seq DESC LIMIT 1", from).Scan(&before)
	if err != nil && err != pgx.ErrNoRows {
		return span{}, err
	}
	return span{lo: before + 1, hi: before, start: before, end: before}, nil
}

func loadAudit(ctx context.Context, tx pgx.Tx, from, to time.Time, ids []string) (map[string]auditRow, error) {
	rows, err := tx.Query(ctx, `SELECT id, occurred_at, actor, action, outcome, COALESCE(tenant_id::text, ''), COALESCE(agent_id::text, ''),
		COALESCE(session_id::text, ''), COALESCE(host(client_ip), ''), COALESCE(reason, ''), detail::text
		FROM audit_log WHERE occurred_at BETWEEN $1 AND $2 OR id = ANY($3::uuid[])`, from, to, ids)
	if err != nil {
		return nil, err
	}
	out := map[string]auditRow{}
	for rows.Next() {
		var a auditRow
		var detail string
		if err := rows.Scan(&a.id, &a.at, &a.actor, &a.action, &a.outcome, &a.tenant, &a.agent, &a.session, &a.clientIP, &a.reason, &detail); err != nil {
			rows.Close()
			return nil, err
		}
		a.detail = []byte(detail)
		out[a.id] = a
	}
	return out, rows.Err()
}

// loadEvents returns, in sequence order, the events from start to end,
// preceded by the event before start and followed by the one after end.
func loadEvents(ctx context.Context, tx pgx.Tx, sp span) ([]eventRow, error) {
	const cols = "seq, id, occurred_at, action, payload::text, canonical, prev_hash, hash"
	rows, err := tx.Query(ctx, `
		(SELECT `+cols+` FROM events WHERE seq < $1 ORDER BY seq DESC LIMIT 1)
		UNION ALL
		(SELECT `+cols+` FROM events WHERE seq BETWEEN $1 AND $2)
		UNION ALL
		(SELECT `+cols+` FROM events WHERE seq > $2 ORDER BY seq LIMIT 1)
		ORDER BY 1`, sp.start, sp.end)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (eventRow, error) {
		var e eventRow
		var payload string
		err := r.Scan(&e.seq, &e.id, &e.at, &e.action, &payload, &e.canonical, &e.prevHash, &e.hash)
		e.payload = []byte(payload)
		return e, err
	})
}

// checkCommands reports the window's commands that never reached a final
// state: both trails may agree on their request, and still say nothing of
// what became of them.
func (r *Report) checkCommands(ctx context.Context, tx pgx.Tx, from, to time.Time) error {
	rows, err := tx.Query(ctx, `SELECT id::text, name, requested_at FROM commands
		WHERE status = 'requested' AND requested_at BETWEEN $1 AND $2
		  AND COALESCE(deadline, requested_at + interval '2 minutes') < now() - $3::interval
		ORDER BY requested_at`, from, to, unterminatedAfter.String())
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, name string
		var at time.Time
		if err := rows.Scan(&id, &name, &at); err != nil {
			return err
		}
		r.add(CommandUnterminated, id, 0, "%s requested at %s has no completion and was never marked interrupted", name, at.UTC().Format(time.RFC3339))
	}
	return rows.Err()
}

func (r *Report) add(kind, id string, seq int64, format string, args ...any) {
	r.Mismatches = append(r.Mismatches, Mismatch{Kind: kind, ID: id, Seq: seq, Detail: fmt.Sprintf(format, args...)})
}

func (r *Report) check(logs map[string]auditRow, events []eventRow, sp span) {
	seen := map[string]bool{}
	var prev *eventRow
	for i := range events {
		e := &events[i]
		inWindow := sp.inWindow(e.seq)
		if inWindow {
			r.Events++
		}
		if sp.verified(e.seq) {
			if problem := verifyEvent(e); problem != "" {
				r.add(BadHash, e.id, e.seq, "%s", problem)
			}
		}
		if prev != nil {
			if e.seq != prev.seq+1 {
				r.add(SequenceGap, e.id, e.seq, "sequence jumps from %d to %d: %d event(s) missing", prev.seq, e.seq, e.seq-prev.seq-1)
			}
			if !bytes.Equal(e.prevHash, prev.hash) {
				r.add(BrokenChain, e.id, e.seq, "prev_hash does not equal the hash of event %d", prev.seq)
			}
		} else if e.seq >= sp.start && e.seq == 1 && !bytes.Equal(e.prevHash, make([]byte, 32)) {
			// Nothing before start: the chain must begin here.
			r.add(BrokenChain, e.id, e.seq, "the first event does not start the chain")
		} else if e.seq >= sp.start && e.seq > 1 {
			r.add(SequenceGap, e.id, e.seq, "the events before %d are missing", e.seq)
		}
		prev = e
		seen[e.id] = true
		if !inWindow {
			continue
		}
		a, ok := logs[e.id]
		if !ok {
			r.add(MissingAuditLog, e.id, e.seq, "event %s (%s) has no audit_log row", e.id, e.action)
			continue
		}
		if diff := compare(a, e); len(diff) > 0 {
			r.add(FieldDiffers, e.id, e.seq, "audit_log and events differ in: %s", strings.Join(diff, ", "))
		}
	}
	if r.Events == 0 && len(logs) > 0 {
		r.add(NoEvents, "", 0, "the window holds %d audit_log row(s) and not one event", len(logs))
	}
	var missing []auditRow
	for id, a := range logs {
		if !seen[id] {
			missing = append(missing, a)
		}
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i].at.Before(missing[j].at) })
	for _, a := range missing {
		r.add(MissingEvent, a.id, 0, "audit_log row %s (%s at %s) has no event", a.id, a.action, a.at.UTC().Format(time.RFC3339Nano))
	}
}

// verifyEvent checks an event's hash against the bytes it covers, and
// that its payload says what those bytes say; it returns what is wrong.
func verifyEvent(e *eventRow) string {
	hashed := e.canonical
	if hashed == nil {
		// Written before events kept their bytes: recompute them.
		var err error
		if hashed, err = audit.Canonical(json.RawMessage(e.payload)); err != nil {
			return "the stored hash does not match the event's content"
		}
	}
	if !bytes.Equal(audit.ChainHash(e.prevHash, hashed), e.hash) {
		return "the stored hash does not match the event's content"
	}
	if e.canonical != nil && !sameJSON(e.canonical, e.payload) {
		return "the payload does not say what the bytes its hash covers say"
	}
	return ""
}

// compare lists the fields on which an audit_log row and its event differ.
func compare(a auditRow, e *eventRow) []string {
	var ev audit.Event
	dec := json.NewDecoder(bytes.NewReader(e.payload))
	dec.UseNumber()
	if err := dec.Decode(&ev); err != nil {
		return []string{"payload (unreadable)"}
	}
	var diff []string
	check := func(name, x, y string) {
		if x != y {
			diff = append(diff, name)
		}
	}
	check("id", a.id, ev.ID)
	if t, err := time.Parse(time.RFC3339Nano, ev.OccurredAt); err != nil || !t.Equal(a.at) || !e.at.Equal(a.at) {
		diff = append(diff, "occurred_at")
	}
	check("actor", a.actor, ev.Actor)
	check("action", a.action, ev.Action)
	check("action (column)", a.action, e.action)
	check("outcome", a.outcome, ev.Outcome)
	// audit_log's uuid and inet columns keep what they can of the event's
	// ids and address, and nothing when it is not one.
	check("tenant_id", a.tenant, asUUID(ev.TenantID))
	check("agent_id", a.agent, asUUID(ev.AgentID))
	check("session_id", a.session, asUUID(ev.SessionID))
	check("client_ip", normIP(a.clientIP), asInet(ev.ClientIP))
	check("reason", a.reason, ev.Reason)

	// audit_log keeps the operator id inside detail; the event beside it.
	// Both are jsonb: compared by meaning, numbers by value.
	detail, _ := decode(a.detail)
	dm, ok := detail.(map[string]any)
	if !ok {
		dm = map[string]any{}
	}
	opID, _ := dm["operator_id"].(string)
	delete(dm, "operator_id")
	check("operator_id", opID, ev.OperatorID)
	evDetail := map[string]any{}
	for k, v := range ev.Detail {
		evDetail[k] = v
	}
	if !ok || !equalJSON(dm, evDetail) {
		diff = append(diff, "detail")
	}
	return diff
}

func asUUID(s string) string {
	u, err := uuid.Parse(s)
	if err != nil {
		return ""
	}
	return u.String()
}

func asInet(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return ""
	}
	return a.WithZone("").Unmap().String()
}

func normIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}

// Nothing reports whether the window holds no row in either trail: a
// clean run over it compared nothing, which is not "all clear".
func (r Report) Nothing() bool { return r.AuditRows == 0 && r.Events == 0 }

// Text renders a report for people and for the mismatch mail.
func (r Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Audit reconciliation %s .. %s\n", r.From.Format(time.RFC3339), r.To.Format(time.RFC3339))
	fmt.Fprintf(&b, "audit_log rows: %d, events: %d, mismatches: %d\n", r.AuditRows, r.Events, len(r.Mismatches))
	b.WriteString(r.headLines())
	if r.Clean && r.Nothing() {
		b.WriteString("\nNo audited actions in this window: neither trail holds a row in it, so there was nothing to compare" +
			" (check the window, and the database it was read from).\n")
		return b.String()
	}
	if r.Clean {
		b.WriteString("\nAll clear: both trails agree and the event chain is intact.\n")
		return b.String()
	}
	b.WriteString("\n")
	for _, m := range r.Mismatches {
		seq := ""
		if m.Seq != 0 {
			seq = fmt.Sprintf(" seq=%d", m.Seq)
		}
		fmt.Fprintf(&b, "- %s id=%s%s: %s\n", m.Kind, m.ID, seq, m.Detail)
	}
	return b.String()
}
