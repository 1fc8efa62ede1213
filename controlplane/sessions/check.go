package sessions

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/topics"
)

// revocationOverlap is how far back each check looks for revocations
// before the last one that succeeded: a revocation is stamped when its
// transaction starts and becomes visible when it commits.
const revocationOverlap = 5 * time.Minute

var repairsCounter = telemetry.NewInstrument("argus/sessions", func(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("argus_state_repairs",
		metric.WithDescription("Broker state found to differ from the database and repaired, by kind."))
})

// Kinds of drift the check repairs.
const (
	RepairLiveSession = "live_session"      // a live entry whose session has ended
	RepairCommandsACL = "commands_acl"      // a commands topic open with no live session
	RepairCredential  = "credential"        // a revoked agent the ACL still admits
	RepairConnection  = "revoked_connected" // a revoked agent still connected
)

// checkLoop compares the broker's state with the database every
// CheckEvery and repairs what differs. Every step after a commit runs
// whatever the caller does next, but a step can still be lost (a crash
// between the two, a broker call that failed); this is what makes the
// broker converge on the database anyway.
func (m *Manager) checkLoop() {
	defer close(m.checked)
	t := time.NewTicker(m.CheckEvery)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := m.CheckState(ctx); err != nil {
			m.Log.Warn("broker state check", "err", err)
		}
		cancel()
	}
}

// CheckState runs one comparison of the broker's state with the database
// and repairs any drift: live sessions that have ended, commands topics
// open without a live session, and revoked agents still admitted or
// connected. It also marks interrupted every command past its deadline
// whose completion was never written.
func (m *Manager) CheckState(ctx context.Context) error {
	m.checkMu.Lock()
	defer m.checkMu.Unlock()
	if err := m.checkLive(ctx); err != nil {
		return err
	}
	m.checkACL()
	if err := m.checkRevoked(ctx); err != nil {
		return err
	}
	return m.interruptOverdue(ctx)
}

func (m *Manager) repaired(kind, agentID, sessionID string) {
	repairsCounter.Get().Add(context.Background(), 1, metric.WithAttributes(attribute.String("kind", kind)))
	m.Log.Warn("repaired broker state", "kind", kind, "agent", agentID, "session", sessionID)
}

// checkLive ends, on the broker, every committed live entry whose session
// the database says has ended (or never was).
func (m *Manager) checkLive(ctx context.Context) error {
	m.mu.Lock()
	ids := make([]string, 0, len(m.live))
	for _, l := range m.live {
		if !l.pending {
			ids = append(ids, l.id)
		}
	}
	m.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	rows, err := m.Pool.Query(ctx, `SELECT id::text FROM support_sessions WHERE id = ANY($1::uuid[]) AND ended_at IS NULL`, ids)
	if err != nil {
		return err
	}
	open, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	isOpen := make(map[string]bool, len(open))
	for _, id := range open {
		isOpen[id] = true
	}
	asked := make(map[string]bool, len(ids))
	for _, id := range ids {
		asked[id] = true
	}
	var stale []Ended
	m.mu.Lock()
	for _, l := range m.live {
		// Asked about and not open: a session that began after the query
		// was not asked about and is left alone.
		if !l.pending && asked[l.id] && !isOpen[l.id] {
			stale = append(stale, Ended{ID: l.id, TenantID: l.tenantID, AgentID: l.agentID})
		}
	}
	m.mu.Unlock()
	for _, e := range stale {
		m.repaired(RepairLiveSession, e.AgentID, e.ID)
		m.ApplyEnded(e)
	}
	return nil
}

// checkACL closes every commands topic open with no session (live or
// being opened) behind it. The decision and the close are made under the
// manager's lock, so an activation registering meanwhile is never closed.
func (m *Manager) checkACL() {
	for _, agentID := range m.ACL.ActiveAgents() {
		m.mu.Lock()
		if _, ok := m.live[agentID]; !ok {
			m.ACL.SetActive(agentID, false)
			if id, err := topics.ParseAgentID(agentID); err == nil {
				m.Broker.DropSubscription(agentID, id.Topic(topics.Commands))
			}
			m.mu.Unlock()
			m.repaired(RepairCommandsACL, agentID, "")
			continue
		}
		m.mu.Unlock()
	}
}

// checkRevoked refuses and disconnects every agent revoked since the last
// check (with some overlap) that the broker still admits or holds.
func (m *Manager) checkRevoked(ctx context.Context) error {
	var now time.Time
	var ids []string
	if err := m.Pool.QueryRow(ctx, `SELECT now(), ARRAY(SELECT id::text FROM agents WHERE revoked_at >= $1)`, m.revokedSince).
		Scan(&now, &ids); err != nil {
		return err
	}
	for _, id := range ids {
		if !m.ACL.Revoked(id) {
			m.ACL.Revoke(id)
			m.repaired(RepairCredential, id, "")
		}
		if m.Fleet.Online(id) && m.Broker.Disconnect(id, packets.ErrNotAuthorized) {
			m.repaired(RepairConnection, id, "")
		}
	}
	m.revokedSince = now.Add(-revocationOverlap)
	return nil
}
