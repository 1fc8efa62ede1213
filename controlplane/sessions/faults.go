package sessions

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/topics"
)

// Codes and outcomes of commands the agent did not see through.
const (
	// CodeAgentOffline is a command for an agent that is not connected.
	CodeAgentOffline = "agent_offline"
	// CodeAgentNotReady is an agent connected but not (yet) subscribed
	// to its commands: a command sent now would be lost.
	CodeAgentNotReady = "agent_not_ready"
	// CodeAgentDisconnected is a command whose agent went away while it
	// was in flight.
	CodeAgentDisconnected = "agent_disconnected"
	// CodeInterrupted is a command whose completion was never written
	// (the database or the server died on the way).
	CodeInterrupted = "interrupted"
)

// reconnectWindow is how recently an agent must have gone (or the server
// have started) for a command to wait for it rather than be refused.
const reconnectWindow = 30 * time.Second

// interruptGrace is how long past its deadline a command may still be
// completing on the node that runs it before the check marks it.
const interruptGrace = 10 * time.Second

// awaitAgent checks, as a command arrives, that the session's agent can
// receive it: connected here and subscribed to its commands. An agent that
// is reconnecting gets ReconnectWait to come back; one gone for longer is
// refused at once.
func (m *Manager) awaitAgent(ctx context.Context, agentID string) *Refusal {
	if r := m.withheld(); r != nil {
		return r
	}
	if m.subscribed(agentID) || m.heldElsewhere(ctx, agentID) != "" {
		// Held elsewhere: its node waits for the subscription.
		return nil
	}
	gone, wasHere := m.Fleet.GoneSince(agentID)
	reconnecting := m.Fleet.Online(agentID) || time.Since(m.started) < reconnectWindow || (wasHere && time.Since(gone) < reconnectWindow)
	// In a cluster an agent connected nowhere with a live session may be
	// moving between nodes: it gets the same wait.
	reconnecting = reconnecting || m.Route != nil && m.Route.Multi()
	if !reconnecting {
		return m.notThere(agentID)
	}
	m.awaiting.Add(1)
	defer m.awaiting.Add(-1)
	wait := time.NewTimer(m.ReconnectWait)
	defer wait.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for n := 0; !m.subscribed(agentID); n++ {
		select {
		case <-tick.C:
			// Where it is recorded is read less often than the broker.
			if n%8 == 7 && m.heldElsewhere(ctx, agentID) != "" {
				return nil
			}
		case <-wait.C:
			return m.notThere(agentID)
		case <-ctx.Done():
			return m.notThere(agentID)
		}
	}
	return nil
}

// AwaitingAgents is how many commands are waiting now for their agent to
// be back and subscribed.
func (m *Manager) AwaitingAgents() int { return int(m.awaiting.Load()) }

func (m *Manager) notThere(agentID string) *Refusal {
	if m.Fleet.Online(agentID) {
		return refuse(http.StatusConflict, CodeAgentNotReady, "the agent is connected but has not taken up its session's commands; try again")
	}
	return refuse(http.StatusConflict, CodeAgentOffline, "the agent is not connected; there is no way to wake it")
}

// subscribed reports whether the agent is connected here and subscribed
// to its commands topic.
func (m *Manager) subscribed(agentID string) bool {
	id, err := topics.ParseAgentID(agentID)
	if err != nil || !m.Fleet.Online(agentID) {
		return false
	}
	cl, ok := m.Broker.Server().Clients.Get(agentID)
	if !ok {
		return false
	}
	_, ok = cl.State.Subscriptions.Get(id.Topic(topics.Commands))
	return ok
}

// OnAgentStale updates the tenant's indicator when the agent of a live
// session goes silent or is heard from again.
func (m *Manager) OnAgentStale(agentID string, _ bool) {
	m.mu.Lock()
	l := m.live[agentID]
	tenant := ""
	if l != nil && !l.pending {
		tenant = l.tenantID
	}
	m.mu.Unlock()
	if tenant == "" {
		return
	}
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		m.publishTenant(tenant)
	}()
}

// OnAgentDisconnected cancels the commands in flight to an agent that has
// just disconnected: no answer can come, and their callers learn it now.
func (m *Manager) OnAgentDisconnected(agentID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.results {
		if w.agentID == agentID && w.gone != nil {
			select {
			case w.gone <- struct{}{}:
			default:
			}
		}
	}
}

// running marks a commands row as in flight on this node until the
// returned func is called, so the check never marks it interrupted.
func (m *Manager) running(cmdID string) func() {
	m.mu.Lock()
	m.runs[cmdID] = true
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.runs, cmdID)
		m.mu.Unlock()
		m.ranOne()
	}
}

// deadline is when a command of chunks exchanges in session s can have
// had its last answer at the latest.
func (m *Manager) deadline(s session, chunks int) time.Time {
	d := time.Now().Add(time.Duration(chunks) * m.CommandTimeout)
	if s.expiresAt.Before(d) {
		d = s.expiresAt
	}
	return d
}

// interruptOverdue marks every command past its deadline whose completion
// was never written, and that is not running here, as interrupted: its
// row gets a final status and both trails a support.command.interrupted
// action with outcome unknown.
func (m *Manager) interruptOverdue(ctx context.Context) error {
	rows, err := m.Pool.Query(ctx, `
		SELECT c.id::text, c.name, c.session_id::text, s.tenant_id::text, s.agent_id::text, c.requested_at
		FROM commands c JOIN support_sessions s ON s.id = c.session_id
		WHERE c.status = 'requested' AND COALESCE(c.deadline, c.requested_at + interval '2 minutes') < now() - $1::interval
		ORDER BY c.requested_at LIMIT 500`, interruptGrace.String())
	if err != nil {
		return err
	}
	type overdue struct {
		id, name, session, tenant, agent string
		requested                        time.Time
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (overdue, error) {
		var o overdue
		err := r.Scan(&o.id, &o.name, &o.session, &o.tenant, &o.agent, &o.requested)
		return o, err
	})
	if err != nil {
		return err
	}
	for _, o := range list {
		m.mu.Lock()
		here := m.runs[o.id]
		m.mu.Unlock()
		if here {
			continue
		}
		err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `UPDATE commands SET status = 'interrupted', error_code = $2, completed_at = now()
				WHERE id = $1 AND status = 'requested'`, o.id, CodeInterrupted)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = audit.Record(ctx, tx, audit.Entry{
				Actor: "system", Action: "support.command.interrupted", Outcome: audit.Unknown,
				TenantID: o.tenant, AgentID: o.agent, SessionID: o.session,
				Detail: map[string]any{"command_id": o.id, "command": o.name, "code": CodeInterrupted,
					"requested_at": o.requested.UTC().Format(time.RFC3339Nano)},
			})
			return err
		})
		if err != nil {
			return err
		}
		m.Log.Warn("command marked interrupted: its completion was never recorded", "command", o.id, "name", o.name, "session", o.session)
	}
	return nil
}

// settlePatches settles, from the capabilities an agent has just reported,
// every patch sent to it whose outcome was unknown (it timed out, its
// agent went away, or its completion was never written): a
// support.patch.settled action says whether the agent has it applied.
func (m *Manager) settlePatches(ctx context.Context, agentID string, caps json.RawMessage) {
	var reported struct {
		Applied []struct {
			Digest string `json:"bundle_sha256"`
			State  string `json:"state"`
		} `json:"applied_patches"`
	}
	if json.Unmarshal(caps, &reported) != nil {
		return
	}
	applied := map[string]bool{}
	for _, p := range reported.Applied {
		if p.State == "" || p.State == "applied" {
			applied[p.Digest] = true
		}
	}
	rows, err := m.Pool.Query(ctx, `
		SELECT c.id::text, c.session_id::text, s.tenant_id::text, c.args_digest, c.status
		FROM commands c JOIN support_sessions s ON s.id = c.session_id
		WHERE s.agent_id = $1 AND c.name = 'apply_patch' AND c.status IN ('timeout', 'interrupted') AND c.settled_at IS NULL`, agentID)
	if err != nil {
		m.Log.Warn("finding patches to settle", "agent", agentID, "err", err)
		return
	}
	type unsettled struct {
		id, session, tenant, status string
		digest                      []byte
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (unsettled, error) {
		var u unsettled
		err := r.Scan(&u.id, &u.session, &u.tenant, &u.digest, &u.status)
		return u, err
	})
	if err != nil {
		m.Log.Warn("finding patches to settle", "agent", agentID, "err", err)
		return
	}
	for _, u := range list {
		digest := hex.EncodeToString(u.digest)
		err := pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, "UPDATE commands SET settled_at = now() WHERE id = $1 AND settled_at IS NULL", u.id)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = audit.Record(ctx, tx, audit.Entry{
				Actor: "agent:" + agentID, Action: "support.patch.settled", Outcome: audit.Success,
				TenantID: u.tenant, AgentID: agentID, SessionID: u.session,
				Detail: map[string]any{"command_id": u.id, "bundle_sha256": digest, "applied": applied[digest], "was": u.status},
			})
			return err
		})
		if err != nil {
			m.Log.Warn("settling patch", "command", u.id, "err", err)
		}
	}
}
