package sessions

import (
	"context"
	"time"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/topics"
)

// ActionAgentMoved is the audit action of a session's agent arriving at
// this node from another one (its node died, drained, or lost its lease)
// with the session still live.
const ActionAgentMoved = "agent.moved"

// takeOverFor bounds the attempts to take up an arriving agent's session;
// a failed one (the database briefly away) is tried again until then.
const takeOverFor = 10 * time.Second

// OnAgentPresent runs once this node has recorded an agent's connection,
// with the node that held the agent until then ("" when unknown). A live,
// acknowledged session the agent brings along goes on here: its commands
// topic opens and its signed activation is re-published (rearm, as at
// start), and a move from another node is audited first. The session is
// never ended by a move. An agent with no live session is told to be
// dormant. It must not block: the fleet's database worker calls it.
func (m *Manager) OnAgentPresent(agentID, prevNode string) {
	select {
	case <-m.stop:
		return
	default:
	}
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		ctx, cancel := context.WithTimeout(context.Background(), takeOverFor)
		defer cancel()
		retry := time.NewTicker(500 * time.Millisecond)
		defer retry.Stop()
		for {
			err := m.takeOver(ctx, agentID, prevNode)
			if err == nil {
				return
			}
			m.Log.Warn("agent connected: its session could not be taken up here yet", "agent", agentID, "from_node", prevNode, "err", err)
			select {
			case <-retry.C:
			case <-ctx.Done():
				m.Log.Error("agent connected: its session was not taken up here", "agent", agentID, "from_node", prevNode, "err", err)
				return
			case <-m.stop:
				return
			}
		}
	}()
}

func (m *Manager) takeOver(ctx context.Context, agentID, prevNode string) error {
	if _, err := topics.ParseAgentID(agentID); err != nil {
		return nil
	}
	list, err := m.liveSessions(ctx, "s.agent_id = $1", agentID)
	if err != nil {
		return err
	}
	if !m.Fleet.Online(agentID) {
		return nil // gone again: the next connection decides
	}
	var x *liveRow
	for i := range list {
		if list[i].acked && list[i].l.expiresAt.After(time.Now()) {
			x = &list[i]
		}
	}
	if x == nil {
		m.mu.Lock()
		_, here := m.live[agentID]
		m.mu.Unlock()
		// An unacknowledged session is being activated (here or
		// elsewhere), and an expired one is ended by the sweep: each
		// sends its own state. With none at all, the agent is dormant.
		if len(list) == 0 && !here {
			m.publishActivation(&live{agentID: agentID}, topics.StateDormant, "")
		}
		return nil
	}
	l := x.l
	m.mu.Lock()
	cur := m.live[agentID]
	known := cur != nil && cur.id == l.id && !cur.pending
	other := cur != nil && !known
	m.mu.Unlock()
	moved := prevNode != "" && prevNode != m.Node
	m.Log.Debug("agent arrived with a live session", "agent", agentID, "session", l.id, "from_node", prevNode, "known", known, "other", other)
	switch {
	case other:
		// Another session of the agent is being opened here: it decides.
		return nil
	case known && !moved:
		// A reconnect to this node: OnAgentConnected has re-sent it.
		return nil
	case m.fenced():
		// A fenced node sends its agents away; the next node takes it.
		return nil
	}
	if moved {
		// On record before the agent hears of its session here.
		if err := audit.Write(ctx, m.Pool, audit.Entry{
			Actor: "system", Action: ActionAgentMoved, Outcome: audit.Success,
			TenantID: l.tenantID, AgentID: agentID, SessionID: l.id,
			Detail: map[string]any{"from_node": prevNode, "to_node": m.Node},
		}); err != nil {
			return err
		}
	}
	m.mu.Lock()
	cur = m.live[agentID]
	switch {
	case cur == nil:
		cur = &l
		m.live[agentID] = cur
	case cur.id != l.id || cur.pending:
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	if !m.takeUp(cur) {
		return nil
	}
	// An end committed after the read above found nothing here to close
	// when its broadcast came: read again, and close what was opened.
	var ended bool
	if err := m.Pool.QueryRow(ctx, "SELECT ended_at IS NOT NULL FROM support_sessions WHERE id = $1", l.id).Scan(&ended); err != nil {
		m.Log.Warn("re-read a session taken up here", "session", l.id, "err", err)
	} else if ended {
		m.ApplyEnded(Ended{ID: l.id, TenantID: l.tenantID, AgentID: agentID})
		return nil
	}
	if moved {
		m.Log.Info("agent moved here with its live session", "agent", agentID, "session", l.id, "from_node", prevNode, "to_node", m.Node)
	}
	return nil
}

// takeUp rearms a session on this node unless an end took its entry away
// meanwhile, and updates the tenant's indicator.
func (m *Manager) takeUp(l *live) bool {
	m.mu.Lock()
	ended := l.ended
	m.mu.Unlock()
	if ended {
		return false
	}
	m.rearm(l)
	m.publishTenant(l.tenantID)
	m.mu.Lock()
	ended = l.ended
	m.mu.Unlock()
	if ended {
		// The end's broker steps ran between the check and the rearm.
		m.closeOnBroker(l.id, l.agentID)
		return false
	}
	return true
}
