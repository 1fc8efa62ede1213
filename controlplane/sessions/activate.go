package sessions

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/internal/credential"
	"github.com/argus-remote/argus/topics"
)

// ErrEnded means the session had already ended.
var ErrEnded = errors.New("session already ended")

// ActivateRequest asks for a session.
type ActivateRequest struct {
	Tenant string // name or id
	Agent  string // id
	Reason string
	TTL    time.Duration
	// Who asks, from where: the operator behind the gate.
	OperatorID string
	Operator   string
	ClientIP   string
	// OnPending, when set, is told once the activation waits for its
	// tenant's approval, with the session's token (shown once).
	OnPending func(a Approval, token string)
}

// Session is a session as the API shows it; it never holds the token.
type Session struct {
	ID         string     `json:"id"`
	TenantID   string     `json:"tenant_id"`
	Tenant     string     `json:"tenant"`
	AgentID    string     `json:"agent_id"`
	AgentName  string     `json:"agent_name"`
	OperatorID string     `json:"operator_id"`
	Operator   string     `json:"operator"`
	Reason     string     `json:"reason"`
	ClientIP   string     `json:"client_ip,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	AckedAt    *time.Time `json:"acked_at,omitempty"`
	EndedAt    *time.Time `json:"ended_at,omitempty"`
	EndReason  string     `json:"end_reason,omitempty"`
	Active     bool       `json:"active"`
}

// Activate runs the checks in their fixed order, mints the session, sends
// the agent its signed activation, opens its commands topic, and waits for
// its ack. Every attempt is audited; the token is returned once.
func (m *Manager) Activate(ctx context.Context, req ActivateRequest) (_ Session, _ string, err error) {
	ctx, span := tracer().Start(ctx, "support.activate", trace.WithAttributes(attribute.String("argus.agent_id", req.Agent)))
	defer func() {
		code := "ok"
		var r *Refusal
		if errors.As(err, &r) {
			code = r.Code
		} else if err != nil {
			code = "error"
			span.SetStatus(codes.Error, err.Error())
		}
		span.SetAttributes(attribute.String("argus.code", code))
		activations().Add(ctx, 1, metric.WithAttributes(attribute.String("code", code)))
		span.End()
	}()
	entry := audit.Entry{
		Actor: "operator:" + req.Operator, OperatorID: req.OperatorID, Action: "support.activate",
		ClientIP: req.ClientIP, Reason: req.Reason, AgentID: req.Agent,
		Detail: map[string]any{"tenant": req.Tenant, "ttl": req.TTL.String()},
	}
	deny := func(r *Refusal) (Session, string, error) { return Session{}, "", m.denied(ctx, entry, r) }
	if strings.TrimSpace(req.Reason) == "" {
		return deny(refuse(http.StatusBadRequest, "reason_required", "a reason is required"))
	}
	if err := input.Text("reason", req.Reason, MaxReason); err != nil {
		return deny(refuse(http.StatusBadRequest, err.Code, err.Message))
	}
	if req.TTL == 0 {
		req.TTL = DefaultTTL
		entry.Detail["ttl"] = req.TTL.String()
	}

	var (
		agentTenant, tenantName, agentName string
		revoked, consent, armed            bool
	)
	found := false
	if id, ok := input.ID(req.Agent); ok {
		req.Agent, entry.AgentID = id, id
		err := m.Pool.QueryRow(ctx, `
			SELECT a.tenant_id, t.name, a.name, a.revoked_at IS NOT NULL, t.consent_id IS NOT NULL, t.armed_at IS NOT NULL
			FROM agents a JOIN tenants t ON t.id = a.tenant_id
			WHERE a.id = $1 AND (t.name = $2 OR t.id::text = $2)`, req.Agent, req.Tenant).
			Scan(&agentTenant, &tenantName, &agentName, &revoked, &consent, &armed)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return Session{}, "", fmt.Errorf("activate: %w", err)
		}
		found = err == nil
	}
	entry.TenantID = agentTenant
	withheld := m.withheld() // once: the node may unfence between two looks
	switch {
	case !found:
		entry.AgentID = ""
		entry.Detail["agent"] = req.Agent
		return deny(refuse(http.StatusNotFound, "agent_not_found", "no such agent in that tenant"))
	case revoked:
		return deny(refuse(http.StatusConflict, "agent_revoked", "the agent's enrollment is revoked"))
	case !consent:
		return deny(refuse(http.StatusConflict, "tenant_consent_required",
			"the tenant has no signed remote-support consent on record; record it with 'argusctl tenant consent record "+tenantName+" ...'"))
	case !armed:
		return deny(refuse(http.StatusConflict, "tenant_not_armed", "the tenant is not armed; 'argusctl tenant arm "+tenantName+" --reason ...' first"))
	case withheld != nil:
		return deny(withheld)
	case !m.connected(ctx, req.Agent):
		return deny(refuse(http.StatusConflict, "agent_offline", "the agent is not connected; there is no way to wake it"))
	case m.killSwitch(ctx, req.Agent):
		return deny(refuse(http.StatusConflict, "agent_kill_switch_engaged", "the tenant has engaged the agent's kill switch"))
	}
	if req.TTL > MaxTTL {
		return deny(refuse(http.StatusBadRequest, "ttl_exceeds_cap", fmt.Sprintf("ttl %v is over the %v cap", req.TTL, MaxTTL)))
	}
	if req.TTL < MinTTL {
		return deny(refuse(http.StatusBadRequest, "ttl_too_short", fmt.Sprintf("ttl %v is under %v", req.TTL, MinTTL)))
	}

	tok, err := credential.Mint(credential.Session)
	if err != nil {
		return Session{}, "", err
	}
	// The session is registered before it commits: it holds the agent
	// against a second activation, and an end that commits before the
	// broker steps below run finds it and marks it ended.
	s := Session{ID: uuid.NewString()}
	l := &live{id: s.ID, tenantID: agentTenant, agentID: req.Agent, operator: req.Operator, pending: true}
	ackCh := make(chan topics.ActivationAckMsg, 4)
	for confirmed := false; ; confirmed = true {
		m.mu.Lock()
		old, busy := m.live[req.Agent]
		if !busy {
			m.live[req.Agent] = l
			m.acks[s.ID] = waiter{agentID: req.Agent, sessionID: s.ID, acks: ackCh}
			m.mu.Unlock()
			break
		}
		held := *old
		m.mu.Unlock()
		if confirmed || held.pending {
			return deny(refuse(http.StatusConflict, "agent_busy", "the agent already has a live session"))
		}
		// Memory may be stale: the end of the session it holds may have
		// committed elsewhere and its broadcast been lost. The record
		// decides; an end found there is applied here first, as the check
		// would apply it.
		ended, err := m.endedInRecord(ctx, held.id)
		if err != nil {
			return Session{}, "", fmt.Errorf("activate: %w", err)
		}
		if !ended {
			return deny(refuse(http.StatusConflict, "agent_busy", "the agent already has a live session"))
		}
		m.repaired(RepairLiveSession, held.agentID, held.id)
		m.ApplyEnded(Ended{ID: held.id, TenantID: held.tenantID, AgentID: held.agentID})
	}
	defer func() {
		m.mu.Lock()
		delete(m.acks, s.ID)
		if l.pending && m.live[req.Agent] == l {
			delete(m.live, req.Agent) // never committed
		}
		m.mu.Unlock()
	}()

	if err := m.awaitApproval(ctx, req, &entry, s.ID, tok.Plain); err != nil {
		return Session{}, "", err
	}

	var raced *Refusal
	err = pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		// Checked again under share locks: a disarm, a consent withdrawal
		// or a revocation that commits after the checks above and before
		// this insert would otherwise find no session to end.
		var consentNow, armedNow, revokedNow bool
		if err := tx.QueryRow(ctx, `SELECT t.consent_id IS NOT NULL, t.armed_at IS NOT NULL, a.revoked_at IS NOT NULL
			FROM agents a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = $1 FOR SHARE OF a, t`, req.Agent).
			Scan(&consentNow, &armedNow, &revokedNow); err != nil {
			return err
		}
		switch {
		case revokedNow:
			raced = refuse(http.StatusConflict, "agent_revoked", "the agent's enrollment is revoked")
		case !consentNow:
			raced = refuse(http.StatusConflict, "tenant_consent_required", "the tenant has no signed remote-support consent on record")
		case !armedNow:
			raced = refuse(http.StatusConflict, "tenant_not_armed", "the tenant is not armed")
		}
		if raced != nil {
			return raced
		}
		err := tx.QueryRow(ctx, `INSERT INTO support_sessions (id, tenant_id, agent_id, operator_id, token_hash, reason, client_ip, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7::inet, now() + $8::interval) RETURNING created_at, expires_at`,
			s.ID, agentTenant, req.Agent, req.OperatorID, credential.Hash(tok.Plain), req.Reason, nullIP(req.ClientIP), req.TTL.String()).
			Scan(&s.CreatedAt, &s.ExpiresAt)
		if err != nil {
			return err
		}
		entry.Outcome, entry.SessionID = audit.Success, s.ID
		entry.Detail["expires_at"] = s.ExpiresAt
		_, err = audit.Record(ctx, tx, entry)
		return err
	})
	if raced != nil {
		return deny(raced)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.ConstraintName == "support_sessions_one_live_per_agent" {
		return deny(refuse(http.StatusConflict, "agent_busy", "the agent already has a live session"))
	}
	if err != nil {
		return Session{}, "", fmt.Errorf("activate: %w", err)
	}
	s.TenantID, s.Tenant, s.AgentID, s.AgentName = agentTenant, tenantName, req.Agent, agentName
	s.OperatorID, s.Operator, s.Reason, s.ClientIP, s.Active = req.OperatorID, req.Operator, req.Reason, req.ClientIP, true

	// Committed: from here every path either opens the session on the
	// broker or leaves it closed there, whatever the caller does next.
	m.mu.Lock()
	l.createdAt, l.expiresAt, l.pending = s.CreatedAt, s.ExpiresAt, false
	m.mu.Unlock()
	if m.AfterCommit != nil {
		m.AfterCommit(s.ID)
	}
	ended := Ended{ID: s.ID, TenantID: agentTenant, AgentID: req.Agent}
	failed := make(chan string, 1)
	opened, wait := m.open(ctx, l, req.Reason, ackCh, failed)
	if !opened {
		m.AfterEnd(ended)
		return Session{}, "", refuse(http.StatusConflict, "session_ended", "the session ended while it was being activated")
	}

	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case ack := <-ackCh:
			if ack.State != topics.StateActive {
				m.Log.Warn("agent refused activation", "session", s.ID, "code", ack.Error)
				return m.failActivation(ctx, s, "the agent refused the activation: "+ack.Error)
			}
			tag, err := m.Pool.Exec(ctx, "UPDATE support_sessions SET acked_at = now() WHERE id = $1 AND ended_at IS NULL", s.ID)
			if err != nil {
				return m.failActivation(ctx, s, "the acknowledgement could not be recorded")
			}
			if tag.RowsAffected() == 0 {
				// Ended meanwhile: its end's broker steps may have run
				// before ours; run them again.
				m.AfterEnd(ended)
				return Session{}, "", refuse(http.StatusConflict, "session_ended", "the session ended while it was being activated")
			}
			now := time.Now().UTC()
			s.AckedAt = &now
			return s, tok.Plain, nil
		case code := <-failed:
			switch code {
			case cluster.Ended:
				m.AfterEnd(ended)
				return Session{}, "", refuse(http.StatusConflict, "session_ended", "the session ended while it was being activated")
			case EndNoAck:
				return m.failActivation(ctx, s, "the agent did not acknowledge the activation in time")
			}
			if _, err := m.End(context.WithoutCancel(ctx), s.ID, EndUnreachable, audit.Entry{Actor: "system"}); err != nil && !errors.Is(err, ErrEnded) {
				return Session{}, "", err
			}
			return Session{}, "", refuse(http.StatusBadGateway, CodeAgentUnreachable, "the node holding the agent did not answer, or no longer holds it; the session was ended")
		case <-timer.C:
			return m.failActivation(ctx, s, "the agent did not acknowledge the activation in time")
		case <-ctx.Done():
			return m.failActivation(ctx, s, "the request was cancelled")
		}
	}
}

// endedInRecord reports whether the database says the session has ended
// (or never was).
func (m *Manager) endedInRecord(ctx context.Context, sessionID string) (bool, error) {
	var open bool
	err := m.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM support_sessions WHERE id = $1 AND ended_at IS NULL)`, sessionID).Scan(&open)
	return !open, err
}

// failActivation ends a committed session that did not open. Its end is
// what follows the commit, so it runs whether or not the caller is still
// there: the request's own cancellation can be what made it fail.
func (m *Manager) failActivation(ctx context.Context, s Session, why string) (Session, string, error) {
	ctx = context.WithoutCancel(ctx)
	if _, err := m.End(ctx, s.ID, EndNoAck, audit.Entry{Actor: "system"}); err != nil && !errors.Is(err, ErrEnded) {
		return Session{}, "", err
	}
	return Session{}, "", refuse(http.StatusGatewayTimeout, "agent_did_not_acknowledge", why)
}

// Ended describes a session that has just ended, for the work that follows
// the commit.
type Ended struct {
	ID, TenantID, AgentID string
}

// End ends one live session, audited, and then closes it on the broker.
// It returns ErrEnded when the session had already ended.
func (m *Manager) End(ctx context.Context, sessionID, reason string, by audit.Entry) (Ended, error) {
	if id, ok := input.ID(sessionID); ok {
		sessionID = id
	}
	var ended []Ended
	err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		var err error
		ended, err = EndTx(ctx, tx, "id = $1", sessionID, reason, by)
		return err
	})
	if err != nil {
		return Ended{}, fmt.Errorf("end session: %w", err)
	}
	if len(ended) == 0 {
		// Ended before: its broker steps run again, since the first end's
		// may have been lost after its commit.
		var e Ended
		err := m.Pool.QueryRow(ctx, "SELECT id, tenant_id, agent_id FROM support_sessions WHERE id = $1", sessionID).
			Scan(&e.ID, &e.TenantID, &e.AgentID)
		if err == nil {
			m.AfterEnd(e)
		}
		return Ended{}, ErrEnded
	}
	m.AfterEnd(ended...)
	return ended[0], nil
}

// EndedOnBroker closes on the broker whatever is still open there of an
// agent whose sessions have all ended (a revoked agent), so a repeated
// revocation repairs what a step lost after the first one's commit left.
func (m *Manager) EndedOnBroker(agentID string) {
	m.mu.Lock()
	l := m.live[agentID]
	m.mu.Unlock()
	switch {
	case l == nil:
		m.ACL.SetActive(agentID, false)
	case !l.pending:
		m.AfterEnd(Ended{ID: l.id, TenantID: l.tenantID, AgentID: agentID})
	}
}

// EndTx ends the live sessions matching where (a condition on
// support_sessions with one argument) inside tx, each audited. The caller
// commits, then calls AfterEnd.
func EndTx(ctx context.Context, tx pgx.Tx, where string, arg any, reason string, by audit.Entry) ([]Ended, error) {
	rows, err := tx.Query(ctx, `UPDATE support_sessions SET ended_at = now(), end_reason = $2
		WHERE ended_at IS NULL AND `+where+` RETURNING id, tenant_id, agent_id`, arg, reason)
	if err != nil {
		return nil, err
	}
	ended, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Ended, error) {
		var e Ended
		err := r.Scan(&e.ID, &e.TenantID, &e.AgentID)
		return e, err
	})
	if err != nil {
		return nil, err
	}
	for _, e := range ended {
		entry := by
		entry.Action, entry.Outcome = "support.session.end", audit.Success
		entry.SessionID, entry.TenantID, entry.AgentID = e.ID, e.TenantID, e.AgentID
		entry.Detail = map[string]any{"end_reason": reason}
		if _, err := audit.Record(ctx, tx, entry); err != nil {
			return nil, err
		}
	}
	return ended, nil
}

// AfterEnd closes ended sessions on the broker: the commands topic shuts
// at once (the ACL is checked on every delivery), the subscription is
// dropped, the agent is told to go dormant, and the tenant's indicator
// updates.
func (m *Manager) AfterEnd(ended ...Ended) {
	m.ApplyEnded(ended...)
	if m.Ended != nil && len(ended) > 0 {
		m.Ended(ended)
	}
}

// ApplyEnded runs, on this node, the broker steps of ends committed
// elsewhere (another node's, or found by the check): the same as
// AfterEnd, without telling anyone else.
func (m *Manager) ApplyEnded(ended ...Ended) {
	tenants := map[string]bool{}
	for _, e := range ended {
		m.rows.Evict(e.ID)
		tenants[e.TenantID] = true
		m.mu.Lock()
		l, ok := m.live[e.AgentID]
		if ok && l.id != e.ID {
			// A newer session of this agent is live (or being opened):
			// this end is stale and must not close it.
			m.mu.Unlock()
			continue
		}
		if ok {
			l.ended = true
			delete(m.live, e.AgentID)
		}
		m.mu.Unlock()
		m.closeOnBroker(e.ID, e.AgentID)
		m.Log.Info("support session ended", "session", e.ID, "agent", e.AgentID)
	}
	for t := range tenants {
		m.publishTenant(t)
	}
}

// openOnBroker opens a committed session's commands topic and sends the
// agent its activation. It reports false when an end took the session
// away meanwhile; whatever it opened is then closed again.
func (m *Manager) openOnBroker(l *live, reason string) bool {
	m.mu.Lock()
	ended := l.ended
	m.mu.Unlock()
	if ended {
		return false
	}
	m.ACL.SetActive(l.agentID, true)
	m.publishActivation(l, topics.StateActive, reason)
	m.publishTenant(l.tenantID)
	// An end whose broker steps ran between the check above and the
	// steps just taken closed less than there is now to close.
	m.mu.Lock()
	ended = l.ended
	m.mu.Unlock()
	if ended {
		m.closeOnBroker(l.id, l.agentID)
		return false
	}
	return true
}

// closeOnBroker shuts an agent's commands topic at once (the ACL is
// checked on every delivery), drops its subscription and tells the agent
// to go dormant.
func (m *Manager) closeOnBroker(sessionID, agentID string) {
	m.ACL.SetActive(agentID, false)
	if id, err := topics.ParseAgentID(agentID); err == nil {
		m.Broker.DropSubscription(agentID, id.Topic(topics.Commands))
	}
	m.publishActivation(&live{id: sessionID, agentID: agentID}, topics.StateDormant, "")
}

// Get returns one session.
func (m *Manager) Get(ctx context.Context, id string) (Session, error) {
	id, ok := input.ID(id)
	if !ok {
		return Session{}, refuse(http.StatusNotFound, "session_not_found", "no such session")
	}
	list, err := m.list(ctx, "s.id = $1", id)
	if err != nil {
		return Session{}, err
	}
	if len(list) == 0 {
		return Session{}, refuse(http.StatusNotFound, "session_not_found", "no such session")
	}
	return list[0], nil
}

// List returns sessions, newest first; activeOnly keeps live ones.
func (m *Manager) List(ctx context.Context, activeOnly bool) ([]Session, error) {
	if activeOnly {
		return m.list(ctx, "s.ended_at IS NULL AND $1::bool", true)
	}
	return m.list(ctx, "$1::bool", true)
}

func (m *Manager) list(ctx context.Context, where string, arg any) ([]Session, error) {
	rows, err := m.Pool.Query(ctx, `
		SELECT s.id, s.tenant_id, t.name, s.agent_id, a.name, s.operator_id, o.name, s.reason, COALESCE(host(s.client_ip), ''),
		       s.created_at, s.expires_at, s.acked_at, s.ended_at, COALESCE(s.end_reason, '')
		FROM support_sessions s
		JOIN tenants t ON t.id = s.tenant_id JOIN agents a ON a.id = s.agent_id JOIN operators o ON o.id = s.operator_id
		WHERE `+where+` ORDER BY s.created_at DESC LIMIT 500`, arg)
	if err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Session, error) {
		var s Session
		err := r.Scan(&s.ID, &s.TenantID, &s.Tenant, &s.AgentID, &s.AgentName, &s.OperatorID, &s.Operator, &s.Reason, &s.ClientIP,
			&s.CreatedAt, &s.ExpiresAt, &s.AckedAt, &s.EndedAt, &s.EndReason)
		s.Active = s.EndedAt == nil && s.ExpiresAt.After(time.Now())
		return s, err
	})
}

func nullIP(ip string) *string {
	if ip == "" {
		return nil
	}
	return &ip
}
