package sessions

import (
	"context"
	"sync"
	"time"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/topics"
)

// ActionAgentMoved is the audit action of a session's agent arriving at
// this node from another one (its node died, drained, or lost its lease)
// with the session still live.
const ActionAgentMoved = "agent.moved"

// arrivalBatch bounds the agents whose sessions one query reads: a
// reconnecting fleet (a node died) is read in a few queries, not one per
// agent.
const arrivalBatch = 1000

// arrivalRetry is the pause after a failed read of arriving agents'
// sessions (the database briefly away) before they are read again.
const arrivalRetry = 500 * time.Millisecond

// arrivals are the agents recorded here whose sessions are still to be
// read, with the node each came from.
type arrivals struct {
	mu      sync.Mutex
	pending map[string]string
	wake    chan struct{}
}

// OnAgentPresent runs once this node has recorded an agent's connection,
// with the node that held the agent until then ("" when unknown). A live,
// acknowledged session the agent brings along goes on here: its commands
// topic opens and its signed activation is re-published (rearm, as at
// start), and a move from another node is audited first. The session is
// never ended by a move. An agent with no live session is told to be
// dormant. It only queues the agent (the fleet's database worker calls
// it); arrive reads the queue in batches.
func (m *Manager) OnAgentPresent(agentID, prevNode string) {
	a := &m.arrived
	a.mu.Lock()
	if a.pending == nil {
		a.pending = map[string]string{}
	}
	// A quick second connection must not lose where the first came from.
	if old, ok := a.pending[agentID]; !ok || old == "" {
		a.pending[agentID] = prevNode
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// arrive takes up the sessions of the agents OnAgentPresent queued, until
// Stop.
func (m *Manager) arrive() {
	defer close(m.arriveDone)
	a := &m.arrived
	for {
		select {
		case <-m.stop:
			return
		case <-a.wake:
		}
		for {
			a.mu.Lock()
			batch := make(map[string]string, min(len(a.pending), arrivalBatch))
			for id, prev := range a.pending {
				if len(batch) == arrivalBatch {
					break
				}
				batch[id] = prev
				delete(a.pending, id)
			}
			a.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			if err := m.arriveBatch(batch); err != nil {
				m.Log.Warn("arriving agents' sessions not read yet", "agents", len(batch), "err", err)
				a.mu.Lock()
				for id, prev := range batch {
					if _, again := a.pending[id]; !again {
						a.pending[id] = prev
					}
				}
				a.mu.Unlock()
				select {
				case <-m.stop:
					return
				case <-time.After(arrivalRetry):
				}
			}
		}
	}
}

// arriveBatch reads the live sessions of a batch of arriving agents and
// takes each up; it fails whole when the read fails, and is tried again.
func (m *Manager) arriveBatch(batch map[string]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ids := make([]string, 0, len(batch))
	for id := range batch {
		if _, err := topics.ParseAgentID(id); err == nil {
			ids = append(ids, id)
		}
	}
	list, err := m.liveSessions(ctx, "s.agent_id = ANY($1::uuid[])", ids)
	if err != nil {
		return err
	}
	byAgent := make(map[string][]liveRow, len(list))
	for _, x := range list {
		byAgent[x.l.agentID] = append(byAgent[x.l.agentID], x)
	}
	var failed error
	for _, id := range ids {
		if err := m.takeOver(ctx, id, batch[id], byAgent[id]); err != nil {
			// Its move could not be audited: the agent is read again.
			m.Log.Warn("agent connected: its session could not be taken up here yet", "agent", id, "from_node", batch[id], "err", err)
			m.arrived.mu.Lock()
			if _, again := m.arrived.pending[id]; !again {
				m.arrived.pending[id] = batch[id]
			}
			m.arrived.mu.Unlock()
			failed = err
		}
	}
	if failed != nil {
		select {
		case <-m.stop:
		case <-time.After(arrivalRetry):
		}
	}
	return nil
}

// takeOver decides what an agent that has just connected here gets, from
// its live sessions (list).
func (m *Manager) takeOver(ctx context.Context, agentID, prevNode string, list []liveRow) error {
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
	restored := known && cur.restored
	other := cur != nil && !known
	m.mu.Unlock()
	moved := prevNode != "" && prevNode != m.Node
	m.Log.Debug("agent arrived with a live session", "agent", agentID, "session", l.id, "from_node", prevNode, "known", known, "other", other)
	switch {
	case other:
		// Another session of the agent is being opened here: it decides.
		return nil
	case known && !moved && !restored:
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
	// From here the activation may be sent: the move is on record.
	cur.restored = false
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
