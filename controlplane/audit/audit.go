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
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Outcomes.
const (
	Success = "success"
	Denied  = "denied"
	Failure = "failure"
)

// auditWrites is looked up at each use, like every instrument here, so it
// reports to the meter provider installed now, not the first one ever.
func auditWrites() metric.Int64Counter {
	c, _ := otel.Meter("argus/audit").Int64Counter("argus_audit_writes",
		metric.WithDescription("Audited actions written (one audit_log row and one event each)."))
	return c
}

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
	Detail map[string]any
}

// Event is the canonical content of an events row, the input of its hash.
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
	sql, args := r.insert(seq+1, prev)
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return "", fmt.Errorf("audit: write: %w", err)
	}
	if c, ok := ctx.Value(chainKey{}).(*chain); ok {
		c.seq, c.hash = seq+1, r.hash
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
	payload []byte
	detail  map[string]any
	ip      *netip.Addr
	hash    []byte
}

func prepare(e Entry) (*row, error) {
	if e.Actor == "" || e.Action == "" || e.Outcome == "" {
		return nil, errors.New("audit: actor, action and outcome are required")
	}
	r := &row{id: uuid.NewString(), e: e}
	// Microseconds: what PostgreSQL stores, so the row reads back as written.
	r.at = time.Now().UTC().Truncate(time.Microsecond)
	ev := Event{
		ID: r.id, OccurredAt: r.at.Format(time.RFC3339Nano), Actor: e.Actor, OperatorID: e.OperatorID, Action: e.Action, Outcome: e.Outcome,
		TenantID: e.TenantID, AgentID: e.AgentID, SessionID: e.SessionID, ClientIP: e.ClientIP,
		Reason: e.Reason, Detail: e.Detail,
	}
	var err error
	if r.payload, err = Canonical(ev); err != nil {
		return nil, err
	}
	r.detail = make(map[string]any, len(e.Detail)+1)
	for k, v := range e.Detail {
		r.detail[k] = v
	}
	if e.OperatorID != "" {
		r.detail["operator_id"] = e.OperatorID
	}
	if a, err := netip.ParseAddr(e.ClientIP); err == nil {
		r.ip = &a
	}
	return r, nil
}

// insert returns the statement writing both rows at sequence seq after
// the event whose hash is prev, and records the row's own hash.
func (r *row) insert(seq int64, prev []byte) (string, []any) {
	r.hash = ChainHash(prev, r.payload)
	e := r.e
	// Both rows in one statement: one round trip, one snapshot.
	return `WITH a AS (
			INSERT INTO audit_log (id, occurred_at, actor, action, outcome, tenant_id, agent_id, session_id, client_ip, reason, detail)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		)
		INSERT INTO events (seq, id, occurred_at, action, payload, prev_hash, hash)
		VALUES ($12, $1, $2, $4, $13, $14, $15)`,
		[]any{r.id, r.at, e.Actor, e.Action, e.Outcome, nullUUID(e.TenantID), nullUUID(e.AgentID), nullUUID(e.SessionID),
			r.ip, nullString(e.Reason), r.detail, seq, json.RawMessage(r.payload), prev, r.hash}
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

func nullUUID(s string) *string {
	if _, err := uuid.Parse(s); err != nil {
		return nil
	}
	return &s
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
