// Package audit is the one way an audited action is recorded: one row in
// audit_log (operational) and one in events (append-only, hash-chained),
// written in the caller's transaction so they commit or vanish together
// with the state change they describe.
package audit

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/argus-remote/argus/internal/telemetry"
)

// Outcomes.
const (
	Success = "success"
	Denied  = "denied"
	Failure = "failure"
	// Unknown is an action whose effect nobody saw: a command that may or
	// may not have run on its agent.
	Unknown = "unknown"
)

// auditWrites is looked up at each use, like every instrument here, so it
// reports to the meter provider installed now, not the first one ever.
var auditWritesCounter = telemetry.NewInstrument("argus/audit", func(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("argus_audit_writes",
		metric.WithDescription("Audited actions written (one audit_log row and one event each)."))
})

func auditWrites() metric.Int64Counter { return auditWritesCounter.Get() }

// chainLock is the advisory lock key that serialises the events chain head
// ("argusaud").
const chainLock int64 = 0x6172677573617564

// Entry describes one audited action.
type Entry struct {
	// Actor is who acted: "operator:<name>", "agent:<id>", "system", "anonymous".
	Actor string
	// OperatorID identifies the operator behind Actor, when there is one.
	OperatorID string
	// Action is what was attempted: "agent.enroll", "agent.revoke", ...
	Action string
	// Outcome is Success, Denied or Failure.
	Outcome   string
	TenantID  string
	AgentID   string
	SessionID string
	ClientIP  string
	Reason    string
	// Detail holds anything else worth keeping; never secrets.
	//
	// Every string here, and every key and string in Detail, is recorded
	// in a spelling PostgreSQL stores (NUL as U+2400, invalid bytes as
	// U+FFFD), and sizes are bounded: see storable.go.
	Detail map[string]any
}

// Event is the content of an events row. Its canonical encoding (see
// Canonical) is what the row's hash covers and what the row keeps, byte
// for byte, in events.canonical; events.payload is the same as jsonb.
type Event struct {
	ID         string         `json:"id"`
	OccurredAt string         `json:"occurred_at"`
	Actor      string         `json:"actor"`
	OperatorID string         `json:"operator_id,omitempty"`
	Action     string         `json:"action"`
	Outcome    string         `json:"outcome"`
	TenantID   string         `json:"tenant_id,omitempty"`
	AgentID    string         `json:"agent_id,omitempty"`
	SessionID  string         `json:"session_id,omitempty"`
	ClientIP   string         `json:"client_ip,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Detail     map[string]any `json:"detail,omitempty"`
}

// Record writes e's two rows in tx and returns the audit id.
func Record(ctx context.Context, tx pgx.Tx, e Entry) (string, error) {
	r, err := prepare(e)
	if err != nil {
		return "", err
	}
	seq, prev, err := chainHead(ctx, tx)
	if err != nil {
		return "", err
	}
	args, seq, head := insert([]*row{r}, seq, prev)
	if _, err := tx.Exec(ctx, insertRows, args...); err != nil {
		return "", fmt.Errorf("audit: write: %w", err)
	}
	if c, ok := ctx.Value(chainKey{}).(*chain); ok {
		c.seq, c.hash = seq, head
	}
	auditWrites().Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", e.Outcome)))
	return r.id, nil
}

// row is an audited action ready to be written once its place in the
// chain is known.
type row struct {
	id      string
	at      time.Time
	e       Entry
	payload []byte  // events.canonical: the bytes the hash covers
	detail  string  // audit_log.detail, JSON
	ip      *string // audit_log.client_ip, when e.ClientIP is an address
	hash    []byte
}

func prepare(e Entry) (*row, error) {
	if e.Actor == "" || e.Action == "" || e.Outcome == "" {
		return nil, errors.New("audit: actor, action and outcome are required")
	}
	// Whatever it was given, the action is recorded (see storable).
	e = storable(e)
	r := &row{id: uuid.NewString()}
	// Microseconds: what PostgreSQL stores, so the row reads back as written.
	r.at = time.Now().UTC().Truncate(time.Microsecond)
	d, err := logDetail(e)
	if err != nil {
		return nil, err
	}
	if len(d) > maxDetailBytes {
		encoded, err := json.Marshal(e.Detail)
		if err != nil {
			return nil, err
		}
		e.Detail = boundDetail(encoded)
		if d, err = logDetail(e); err != nil {
			return nil, err
		}
	}
	r.e, r.detail = e, string(d)
	ev := Event{
		ID: r.id, OccurredAt: r.at.Format(time.RFC3339Nano), Actor: e.Actor, OperatorID: e.OperatorID, Action: e.Action, Outcome: e.Outcome,
		TenantID: e.TenantID, AgentID: e.AgentID, SessionID: e.SessionID, ClientIP: e.ClientIP,
		Reason: e.Reason, Detail: e.Detail,
	}
	if r.payload, err = Canonical(ev); err != nil {
		return nil, err
	}
	if a, err := netip.ParseAddr(e.ClientIP); err == nil {
		ip := a.WithZone("").String()
		r.ip = &ip
	}
	return r, nil
}

// logDetail is audit_log.detail: the entry's detail with the operator id.
func logDetail(e Entry) ([]byte, error) {
	detail := make(map[string]any, len(e.Detail)+1)
	for k, v := range e.Detail {
		detail[k] = v
	}
	if e.OperatorID != "" {
		detail["operator_id"] = e.OperatorID
	}
	return json.Marshal(detail)
}

// insertRows is the statement that writes rows, both of each row's rows,
// whatever their number: a group's audit is one statement, not one per
// action. Values travel as arrays, one per column, text where PostgreSQL
// casts them. An event keeps the bytes its hash covers (canonical) and
// its payload is parsed from them, so the two say the same.
const insertRows = `WITH r AS (
		SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
			$8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bytea[], $14::bytea[], $15::bytea[])
		AS r (id, occurred_at, actor, action, outcome, tenant_id, agent_id, session_id, client_ip, reason, detail,
			seq, canonical, prev_hash, hash)
	), a AS (
		INSERT INTO audit_log (id, occurred_at, actor, action, outcome, tenant_id, agent_id, session_id, client_ip, reason, detail)
		SELECT id::uuid, occurred_at, actor, action, outcome, tenant_id::uuid, agent_id::uuid, session_id::uuid,
			client_ip::inet, reason, detail::jsonb FROM r
	)
	INSERT INTO events (seq, id, occurred_at, action, payload, canonical, prev_hash, hash)
	SELECT seq, id::uuid, occurred_at, action, convert_from(canonical, 'UTF8')::jsonb, canonical, prev_hash, hash FROM r`

// insert returns the arguments of insertRows for rows placed in the chain
// after the event seq whose hash is prev, and records each row's hash. It
// returns the new head.
func insert(rows []*row, seq int64, prev []byte) ([]any, int64, []byte) {
	n := len(rows)
	var (
		ids, actors, actions, outcomes, details = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		tenants, agents, sessions, ips, reasons = make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
		ats                                     = make([]time.Time, n)
		seqs                                    = make([]int64, n)
		payloads, prevs, hashes                 = make([][]byte, n), make([][]byte, n), make([][]byte, n)
	)
	for i, r := range rows {
		seq++
		r.hash = ChainHash(prev, r.payload)
		e := r.e
		ids[i], ats[i], actors[i], actions[i], outcomes[i] = r.id, r.at, e.Actor, e.Action, e.Outcome
		tenants[i], agents[i], sessions[i] = nullUUID(e.TenantID), nullUUID(e.AgentID), nullUUID(e.SessionID)
		ips[i], reasons[i], details[i] = r.ip, nullString(e.Reason), r.detail
		seqs[i], payloads[i], prevs[i], hashes[i] = seq, r.payload, prev, r.hash
		prev = r.hash
	}
	return []any{ids, ats, actors, actions, outcomes, tenants, agents, sessions, ips, reasons, details,
		seqs, payloads, prevs, hashes}, seq, prev
}

// chain carries the chain head through a group commit: the transaction
// holds the chain lock, so the head read once stays true while it lives.
type chain struct {
	seq   int64
	hash  []byte
	valid bool
}

type chainKey struct{}

// chainHead takes the chain lock (once per transaction) and returns the
// sequence number and hash of the newest event.
func chainHead(ctx context.Context, tx pgx.Tx) (int64, []byte, error) {
	c, ok := ctx.Value(chainKey{}).(*chain)
	if ok && c.valid {
		return c.seq, c.hash, nil
	}
	// One chain head: concurrent writers queue here rather than fork it.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", chainLock); err != nil {
		return 0, nil, fmt.Errorf("audit: chain lock: %w", err)
	}
	var seq int64
	var prev []byte
	err := tx.QueryRow(ctx, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").Scan(&seq, &prev)
	if errors.Is(err, pgx.ErrNoRows) {
		seq, prev, err = 0, make([]byte, sha256.Size), nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("audit: chain head: %w", err)
	}
	if ok {
		c.seq, c.hash, c.valid = seq, prev, true
	}
	return seq, prev, nil
}

// Write records e in a transaction of its own: for attempts that change
// nothing but must be kept, such as denials.
func Write(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, e Entry) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		_, err := Record(ctx, tx, e)
		return err
	})
}

// ChainHash links a payload to the hash before it.
func ChainHash(prev, payload []byte) []byte {
	h := sha256.New()
	h.Write(prev)
	h.Write(payload)
	return h.Sum(nil)
}

// nullUUID is what audit_log keeps of an id: the UUID in its canonical
// spelling (PostgreSQL does not read every spelling uuid.Parse does, such
// as urn:uuid:...), or NULL when it is not one; the event keeps it as
// given.
func nullUUID(s string) *string {
	u, err := uuid.Parse(s)
	if err != nil {
		return nil
	}
	c := u.String()
	return &c
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
