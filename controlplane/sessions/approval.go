package sessions

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
)

// Codes of an activation that waited for the tenant.
const (
	CodeTenantDenied          = "tenant_denied"
	CodeTenantApprovalTimeout = "tenant_approval_timeout"
	CodeApprovalWithdrawn     = "approval_withdrawn"
	CodeApprovalDecided       = "approval_decided"
)

// States of an approval request as the API shows it.
const (
	StatePendingApproval = "pending_approval"
	DecisionApproved     = "approved"
	DecisionDenied       = "denied"
	DecisionTimeout      = "timeout"
	DecisionWithdrawn    = "withdrawn"
)

// OutcomeOpened is the outcome of an approved activation whose session
// opened.
const OutcomeOpened = "opened"

// approvalPoll is how often a waiting activation reads its request's
// decision. The decision may be taken on any node, so the wait is on the
// database, never on this node's memory.
const approvalPoll = 200 * time.Millisecond

// Approval is an activation waiting for (or decided by) the tenant. Its
// id is the session's id.
type Approval struct {
	ID           string     `json:"id"`
	State        string     `json:"state"`
	TenantID     string     `json:"tenant_id"`
	AgentID      string     `json:"agent_id"`
	AgentName    string     `json:"agent_name"`
	OperatorID   string     `json:"operator_id,omitempty"`
	Operator     string     `json:"operator"`
	Reason       string     `json:"reason"`
	TTL          string     `json:"ttl"`
	RequestedAt  time.Time  `json:"requested_at"`
	Deadline     time.Time  `json:"deadline"`
	DecidedAt    *time.Time `json:"decided_at,omitempty"`
	DecidedBy    string     `json:"decided_by,omitempty"`
	Note         string     `json:"note,omitempty"`
	Outcome      string     `json:"outcome,omitempty"`
	OutcomeText  string     `json:"outcome_message,omitempty"`
	ElapsedMilli int64      `json:"elapsed_ms"`
}

// awaitApproval holds an activation that passed every other gate until
// its tenant decides, when the tenant requires approval: it records the
// request (audited), tells req.OnPending, and polls the decision. It
// returns nil when the activation may commit (entry then names the
// approver), and the audited refusal otherwise. No field of the request
// can skip it: the mode is read from the tenant's row.
func (m *Manager) awaitApproval(ctx context.Context, req ActivateRequest, entry *audit.Entry, sessionID, token string) error {
	var mode string
	var timeoutMs int64
	var agentName string
	if err := m.Pool.QueryRow(ctx, `SELECT t.approval_mode, (extract(epoch FROM t.approval_timeout) * 1000)::bigint, a.name
		FROM tenants t JOIN agents a ON a.tenant_id = t.id WHERE t.id = $1 AND a.id = $2`, entry.TenantID, req.Agent).
		Scan(&mode, &timeoutMs, &agentName); err != nil {
		return fmt.Errorf("approval mode: %w", err)
	}
	timeout := time.Duration(timeoutMs) * time.Millisecond
	if mode != "required" {
		return nil
	}
	a := Approval{ID: sessionID, State: StatePendingApproval, TenantID: entry.TenantID, AgentID: req.Agent, AgentName: agentName,
		OperatorID: req.OperatorID, Operator: req.Operator, Reason: req.Reason, TTL: req.TTL.String()}
	err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		// A request left undecided past its deadline (its node stopped
		// waiting) times out now, so it holds the agent no longer.
		if err := expireApprovals(ctx, tx, "agent_id = $1", req.Agent); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO session_approvals (id, tenant_id, agent_id, operator_id, reason, ttl, client_ip, deadline)
			VALUES ($1, $2, $3, $4, $5, $6::interval, $7::inet, now() + $8::interval) RETURNING requested_at, deadline`,
			sessionID, entry.TenantID, req.Agent, req.OperatorID, req.Reason, req.TTL.String(), nullIP(req.ClientIP), timeout.String()).
			Scan(&a.RequestedAt, &a.Deadline); err != nil {
			return err
		}
		e := *entry
		e.Action, e.Outcome, e.SessionID = "support.approval.request", audit.Success, sessionID
		e.Detail = map[string]any{"tenant": req.Tenant, "ttl": req.TTL.String(), "deadline": a.Deadline}
		_, err := audit.Record(ctx, tx, e)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.ConstraintName == "session_approvals_one_waiting_per_agent" {
		return m.denied(ctx, *entry, refuse(http.StatusConflict, "agent_busy", "the agent already has an activation waiting for its tenant's approval"))
	}
	if err != nil {
		return fmt.Errorf("approval request: %w", err)
	}
	m.Log.Info("activation waits for the tenant's approval", "session", sessionID, "tenant", entry.TenantID, "deadline", a.Deadline)
	if req.OnPending != nil {
		req.OnPending(a, token)
	}

	t := time.NewTicker(approvalPoll)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return m.withdrawn(context.WithoutCancel(ctx), entry, sessionID, "the request was cancelled")
		case <-m.stop:
			return m.withdrawn(context.WithoutCancel(ctx), entry, sessionID, "the server stopped while the activation waited")
		}
		var decision, by *string
		var late, consent, armed, revoked bool
		if err := m.Pool.QueryRow(ctx, `SELECT r.decision, r.decided_by, r.deadline <= now(), t.consent_id IS NOT NULL, t.armed_at IS NOT NULL,
			a.revoked_at IS NOT NULL
			FROM session_approvals r JOIN tenants t ON t.id = r.tenant_id JOIN agents a ON a.id = r.agent_id WHERE r.id = $1`, sessionID).
			Scan(&decision, &by, &late, &consent, &armed, &revoked); err != nil {
			m.Log.Warn("read approval", "session", sessionID, "err", err)
			continue
		}
		switch {
		case decision == nil && !consent:
			// Nothing left to approve: the tenant's page stops asking.
			return m.withdrawnFor(context.WithoutCancel(ctx), entry, sessionID, "tenant_consent_required", "the tenant's consent was withdrawn while the activation waited")
		case decision == nil && revoked:
			return m.withdrawnFor(context.WithoutCancel(ctx), entry, sessionID, "agent_revoked", "the agent's enrollment was revoked while the activation waited")
		case decision == nil && !armed:
			return m.withdrawnFor(context.WithoutCancel(ctx), entry, sessionID, "tenant_not_armed", "the tenant was disarmed while the activation waited")
		case decision == nil && late:
			if err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
				return expireApprovals(ctx, tx, "id = $1", sessionID)
			}); err != nil {
				m.Log.Warn("time out approval", "session", sessionID, "err", err)
			}
			continue // read what the update (or a decision that beat it) left
		case decision == nil:
			continue
		case *decision == DecisionApproved:
			entry.Detail["approved_by"] = *by
			// A wait can be long: what the first checks saw may have
			// changed meanwhile. Consent, arm and revocation are checked
			// again by the activation's own transaction.
			withheld := m.withheld() // once: the node may unfence between two looks
			switch {
			case withheld != nil:
				return m.denied(ctx, *entry, withheld)
			case !m.Fleet.Online(req.Agent) && m.heldElsewhere(ctx, req.Agent) == "":
				// Connected to another node is connected: the activation
				// is routed there.
				return m.denied(ctx, *entry, refuse(http.StatusConflict, "agent_offline", "the agent disconnected while the activation waited for approval"))
			case m.Fleet.KillSwitch(req.Agent):
				return m.denied(ctx, *entry, refuse(http.StatusConflict, "agent_kill_switch_engaged", "the tenant has engaged the agent's kill switch"))
			}
			return nil
		case *decision == DecisionDenied:
			entry.Detail["denied_by"] = *by
			return m.denied(ctx, *entry, refuse(http.StatusForbidden, CodeTenantDenied, "the tenant denied the activation"))
		case *decision == DecisionTimeout:
			return m.denied(ctx, *entry, refuse(http.StatusGatewayTimeout, CodeTenantApprovalTimeout, "the tenant did not answer before the approval timeout"))
		default:
			return m.denied(ctx, *entry, refuse(http.StatusConflict, CodeApprovalWithdrawn, "the activation was withdrawn before the tenant decided"))
		}
	}
}

// withdrawn records that an activation stopped waiting undecided and
// returns its audited refusal.
func (m *Manager) withdrawn(ctx context.Context, entry *audit.Entry, id, why string) error {
	return m.withdrawnFor(ctx, entry, id, CodeApprovalWithdrawn, why)
}

// withdrawnFor is withdrawn with the refusal's code: the request can no
// longer open anything (its tenant disarmed, its agent revoked).
func (m *Manager) withdrawnFor(ctx context.Context, entry *audit.Entry, id, code, why string) error {
	var decision string
	err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE session_approvals SET decision = 'withdrawn', decided_at = now(), decided_by = 'system'
			WHERE id = $1 AND decided_at IS NULL RETURNING decision`, id).Scan(&decision)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // decided meanwhile; the refusal below still stands
		}
		if err != nil {
			return err
		}
		e := *entry
		e.Actor, e.OperatorID, e.Action, e.Outcome, e.SessionID = "system", "", "support.approval.withdraw", audit.Success, id
		e.Detail = map[string]any{"why": why}
		_, err = audit.Record(ctx, tx, e)
		return err
	})
	if err != nil {
		return fmt.Errorf("withdraw approval: %w", err)
	}
	return m.denied(ctx, *entry, refuse(http.StatusConflict, code, why))
}

// expireApprovals times out, audited, the undecided requests matching
// where (one argument) whose deadline has passed.
func expireApprovals(ctx context.Context, tx pgx.Tx, where string, arg any) error {
	rows, err := tx.Query(ctx, `UPDATE session_approvals SET decision = 'timeout', decided_at = now(), decided_by = 'system'
		WHERE decided_at IS NULL AND deadline <= now() AND `+where+` RETURNING id::text, tenant_id::text, agent_id::text, deadline`, arg)
	if err != nil {
		return err
	}
	type expired struct {
		id, tenant, agent string
		deadline          time.Time
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (expired, error) {
		var e expired
		err := r.Scan(&e.id, &e.tenant, &e.agent, &e.deadline)
		return e, err
	})
	if err != nil {
		return err
	}
	for _, x := range list {
		if _, err := audit.Record(ctx, tx, audit.Entry{Actor: "system", Action: "support.approval.timeout", Outcome: audit.Success,
			SessionID: x.id, TenantID: x.tenant, AgentID: x.agent, Detail: map[string]any{"deadline": x.deadline}}); err != nil {
			return err
		}
	}
	return nil
}

// Decide approves or denies one of tenantID's waiting activations, for a
// tenant token (by names it as the actor). The refusals it returns are
// not audited: the caller audits them with what it knows of the request.
func (m *Manager) Decide(ctx context.Context, tenantID, id string, approve bool, note string, by audit.Entry) (Approval, error) {
	id, ok := input.ID(id)
	if !ok {
		return Approval{}, refuse(http.StatusNotFound, "session_not_found", "no such session")
	}
	decision, action := DecisionDenied, "support.approval.deny"
	if approve {
		decision, action = DecisionApproved, "support.approval.approve"
	}
	var refusal *Refusal
	err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		if err := expireApprovals(ctx, tx, "id = $1", id); err != nil {
			return err
		}
		var agentID string
		var current *string
		err := tx.QueryRow(ctx, "SELECT agent_id::text, decision FROM session_approvals WHERE id = $1 AND tenant_id = $2 FOR UPDATE", id, tenantID).
			Scan(&agentID, &current)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// Another tenant's request is not told apart from none.
			refusal = refuse(http.StatusNotFound, "session_not_found", "no such session waiting for approval")
			return nil
		case err != nil:
			return err
		case current != nil && *current == DecisionTimeout:
			refusal = refuse(http.StatusConflict, CodeTenantApprovalTimeout, "the request timed out before it was decided")
			return nil
		case current != nil:
			refusal = refuse(http.StatusConflict, CodeApprovalDecided, "the request was already decided: "+*current)
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE session_approvals SET decision = $2, decided_at = now(), decided_by = $3, decision_note = NULLIF($4, '')
			WHERE id = $1`, id, decision, by.Actor, note); err != nil {
			return err
		}
		by.Action, by.Outcome, by.SessionID, by.TenantID, by.AgentID, by.Reason = action, audit.Success, id, tenantID, agentID, note
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return Approval{}, fmt.Errorf("decide approval: %w", err)
	}
	if refusal != nil {
		return Approval{}, refusal
	}
	m.Log.Info("tenant decided an activation", "session", id, "decision", decision, "by", by.Actor)
	return m.ApprovalOf(ctx, id)
}

// SetApprovalOutcome records what became of a decided activation, so
// whoever polls the request learns it ends there.
func (m *Manager) SetApprovalOutcome(ctx context.Context, id, outcome, message string) error {
	_, err := m.Pool.Exec(ctx, "UPDATE session_approvals SET outcome = $2, outcome_message = NULLIF($3, '') WHERE id = $1 AND outcome IS NULL",
		id, outcome, message)
	return err
}

const approvalColumns = `SELECT r.id::text, r.tenant_id::text, r.agent_id::text, a.name, r.operator_id::text, o.name, r.reason, (extract(epoch FROM r.ttl) * 1000)::bigint,
	r.requested_at, r.deadline, r.decided_at, COALESCE(r.decision, ''), COALESCE(r.decided_by, ''), COALESCE(r.decision_note, ''),
	COALESCE(r.outcome, ''), COALESCE(r.outcome_message, ''), r.decided_at IS NULL AND r.deadline <= now(),
	(extract(epoch FROM COALESCE(r.decided_at, now()) - r.requested_at) * 1000)::bigint
	FROM session_approvals r JOIN agents a ON a.id = r.agent_id JOIN operators o ON o.id = r.operator_id `

func scanApprovals(rows pgx.Rows) ([]Approval, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Approval, error) {
		var a Approval
		var decision string
		var ttlMs int64
		var late bool
		err := r.Scan(&a.ID, &a.TenantID, &a.AgentID, &a.AgentName, &a.OperatorID, &a.Operator, &a.Reason, &ttlMs,
			&a.RequestedAt, &a.Deadline, &a.DecidedAt, &decision, &a.DecidedBy, &a.Note, &a.Outcome, &a.OutcomeText, &late, &a.ElapsedMilli)
		a.State = decision
		switch {
		case late:
			a.State = DecisionTimeout // its waiter has not written it yet
		case decision == "":
			a.State = StatePendingApproval
		}
		a.TTL = (time.Duration(ttlMs) * time.Millisecond).String()
		return a, err
	})
}

// ApprovalOf returns one approval request, of any tenant (for operators).
func (m *Manager) ApprovalOf(ctx context.Context, id string) (Approval, error) {
	id, ok := input.ID(id)
	if !ok {
		return Approval{}, refuse(http.StatusNotFound, "session_not_found", "no such session")
	}
	rows, err := m.Pool.Query(ctx, approvalColumns+"WHERE r.id = $1", id)
	if err != nil {
		return Approval{}, fmt.Errorf("approval: %w", err)
	}
	list, err := scanApprovals(rows)
	if err != nil {
		return Approval{}, fmt.Errorf("approval: %w", err)
	}
	if len(list) == 0 {
		return Approval{}, refuse(http.StatusNotFound, "session_not_found", "no activation of that id waited for approval")
	}
	return list[0], nil
}

// PendingApprovals returns the tenant's activations waiting for a
// decision, oldest first.
func (m *Manager) PendingApprovals(ctx context.Context, tenantID string) ([]Approval, error) {
	rows, err := m.Pool.Query(ctx, approvalColumns+`WHERE r.tenant_id = $1 AND r.decided_at IS NULL AND r.deadline > now()
		ORDER BY r.requested_at LIMIT 100`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("pending approvals: %w", err)
	}
	list, err := scanApprovals(rows)
	if err != nil {
		return nil, fmt.Errorf("pending approvals: %w", err)
	}
	for i := range list {
		list[i].OperatorID = "" // the tenant sees who, not the operator's row
	}
	return list, nil
}

// Withdraw gives up an activation still waiting for its tenant, for the
// operator (by); its waiter then refuses it with approval_withdrawn. It
// returns ErrEnded when the request was already decided.
func (m *Manager) Withdraw(ctx context.Context, id string, by audit.Entry) (Approval, error) {
	a, err := m.ApprovalOf(ctx, id)
	if err != nil {
		return Approval{}, err
	}
	var withdrawn bool
	err = pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE session_approvals SET decision = 'withdrawn', decided_at = now(), decided_by = $2
			WHERE id = $1 AND decided_at IS NULL AND deadline > now()`, a.ID, by.Actor)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		withdrawn = true
		by.Action, by.Outcome, by.SessionID, by.TenantID, by.AgentID = "support.approval.withdraw", audit.Success, a.ID, a.TenantID, a.AgentID
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return Approval{}, fmt.Errorf("withdraw approval: %w", err)
	}
	if !withdrawn {
		return Approval{}, ErrEnded
	}
	return m.ApprovalOf(ctx, a.ID)
}
