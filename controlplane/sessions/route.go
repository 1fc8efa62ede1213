package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/topics"
)

// Router reaches the node that holds an agent. The node an operator calls
// keeps the gate, the session checks and both audit writes; the holder
// only does the MQTT exchange. A node alone is a cluster of one: every
// agent it holds is connected here and the router is never asked.
type Router interface {
	// NodeID is this node's id.
	NodeID() string
	// Holder reads which node the agent is connected to now.
	Holder(ctx context.Context, agentID string) (node string, ok bool, err error)
	// Deliver hands d to node and waits, until ctx ends, for its answer.
	Deliver(ctx context.Context, node string, d cluster.Delivery) (cluster.Answer, error)
	// Multi reports whether other nodes may exist.
	Multi() bool
}

// CodeAgentUnreachable is a command or activation whose agent is held by
// a node that did not answer, or no longer held it, twice.
const CodeAgentUnreachable = "agent_unreachable"

// statusUnreachable is the server's own result for a command no node
// could hand to its agent; no agent's answer can carry it.
const statusUnreachable = "unreachable"

// routeGrace is how long past a delivery's deadline its sender waits for
// the holder's answer: the holder gives the agent until the deadline.
const routeGrace = 2 * time.Second

func unreachableResult() topics.ResultMsg {
	return topics.ResultMsg{Status: statusUnreachable, Error: &topics.ErrorBody{Code: CodeAgentUnreachable,
		Message: "the node holding the agent did not answer, or no longer holds it; the command was not delivered"}}
}

// notReadyResult is the server's own result for a command whose agent is
// connected here but has not taken up its commands (it subscribes once it
// has its activation): the broker would drop the command unseen, so it is
// not sent.
func notReadyResult() topics.ResultMsg {
	return topics.ResultMsg{Status: statusUnreachable, Error: &topics.ErrorBody{Code: CodeAgentNotReady,
		Message: "the agent is connected but has not taken up its session's commands; the command was not delivered"}}
}

// heldElsewhere is the other node the record says holds the agent, or ""
// when it is connected here or nowhere.
func (m *Manager) heldElsewhere(ctx context.Context, agentID string) string {
	if m.Route == nil || m.Fleet.Online(agentID) {
		return ""
	}
	node, ok, err := m.Route.Holder(ctx, agentID)
	if err != nil {
		m.Log.Warn("reading where an agent is", "agent", agentID, "err", err)
		return ""
	}
	if !ok || node == m.Route.NodeID() {
		return ""
	}
	return node
}

// connected reports whether the agent is connected to some node.
func (m *Manager) connected(ctx context.Context, agentID string) bool {
	return m.Fleet.Online(agentID) || m.heldElsewhere(ctx, agentID) != ""
}

// maxDeliveryHeader is room left in a NATS message for its headers.
const maxDeliveryHeader = 64 << 10

// probeTimeout bounds an activation's question to the holding node.
const probeTimeout = 2 * time.Second

// killSwitch reports whether the agent's kill switch is engaged, as the
// node holding it knows. A holder that cannot be asked counts as not
// engaged: the activation then finds out, and the agent refuses it under
// its kill switch anyway.
func (m *Manager) killSwitch(ctx context.Context, agentID string) bool {
	if m.Route == nil || m.Fleet.Online(agentID) {
		return m.Fleet.KillSwitch(agentID)
	}
	node := m.heldElsewhere(ctx, agentID)
	if node == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	ans, err := m.Route.Deliver(ctx, node, cluster.Delivery{Kind: cluster.DeliverProbe, AgentID: agentID, Deadline: time.Now().Add(probeTimeout)})
	var p cluster.Probe
	if err != nil || ans.Code != "" || json.Unmarshal(ans.Body, &p) != nil {
		return false
	}
	return p.KillSwitch
}

// findHolder waits up to wait for the agent to be connected here (node
// "") or recorded on another node than failed (the one that just did not
// take it: a draining node leaves its agents' rows for the next); found
// is false when it is none of these. Past wait, a record still naming
// failed is taken as the fresh read it is.
func (m *Manager) findHolder(ctx context.Context, agentID string, wait time.Duration, failed string) (node string, found bool) {
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// A draining node's agents are about to be elsewhere: wait for it.
		if m.Fleet.Online(agentID) && !m.draining.Load() {
			return "", true
		}
		n := m.heldElsewhere(ctx, agentID)
		if n != "" && n != failed {
			return n, true
		}
		if !time.Now().Before(deadline) {
			return n, n != ""
		}
		select {
		case <-ctx.Done():
			return "", false
		case <-tick.C:
		}
	}
}

// deliver hands a signed, recorded command to its agent wherever it is
// connected: through this node's broker, or through the node holding it.
// A holder that does not answer or no longer holds the agent is retried
// once after a fresh read of where the agent is (waiting, up to
// ReconnectWait, for an agent between nodes to be recorded elsewhere);
// then the command is unreachable, never sent.
func (m *Manager) deliver(ctx context.Context, d cluster.Delivery) (topics.ResultMsg, error) {
	if m.Route == nil {
		res, _, err := m.exchangeHere(ctx, d)
		return res, err
	}
	var wait time.Duration
	routed, failed := false, ""
	// lost is a first delivery cut off by its agent's disconnect: sent
	// once more, same id, to the agent where it is next (it runs an id
	// once: one it ran is refused as seen, one lost on the way runs). If
	// it cannot be, what the agent did stays unknown, never unreachable.
	var lost *topics.ResultMsg
	for attempt := 0; attempt < 3; attempt++ {
		if attempt == 2 && lost == nil {
			break
		}
		node, found := m.findHolder(ctx, d.AgentID, min(wait, time.Until(d.Deadline)), failed)
		var res topics.ResultMsg
		switch {
		case node == "" && !found && routed:
			attempt = 3 // nowhere to send it
			continue
		case node == "":
			// Here, or nowhere on a first look: as on one node. One that
			// has just arrived here takes up its commands in a moment.
			if m.Fleet.Online(d.AgentID) {
				m.awaitSubscribed(ctx, d.AgentID, min(m.ReconnectWait, time.Until(d.Deadline)))
			}
			r, here, err := m.exchangeHere(ctx, d)
			if !here && m.draining.Load() {
				// This node drains: the command waits for its agent on the next.
				routed, failed, wait = true, m.Route.NodeID(), m.ReconnectWait
				continue
			}
			if err != nil || !here {
				// Not sent (the agent is not here): as on one node.
				return r, err
			}
			res = r
		default:
			routed = true
			r, ok := m.deliverTo(ctx, node, d)
			if !ok {
				wait, failed = m.ReconnectWait, node
				continue
			}
			res = r
		}
		if res.Error == nil || res.Error.Code != CodeAgentDisconnected || lost != nil || !m.Route.Multi() || !time.Now().Before(d.Deadline) {
			return res, nil
		}
		lost, routed, failed, wait = &res, true, "", m.ReconnectWait
	}
	if lost != nil {
		return *lost, nil
	}
	return unreachableResult(), nil
}

// deliverTo sends a command to the node holding its agent. ok is false
// when the command was certainly not handed to the agent there (no
// responder, not held there, fenced): it may be sent elsewhere.
func (m *Manager) deliverTo(ctx context.Context, node string, d cluster.Delivery) (topics.ResultMsg, bool) {
	rctx, cancel := context.WithDeadline(ctx, d.Deadline.Add(routeGrace))
	defer cancel()
	ans, err := m.Route.Deliver(rctx, node, d)
	switch {
	case errors.Is(err, cluster.ErrNoResponder):
		m.Log.Warn("the agent's node does not answer", "node", node, "agent", d.AgentID, "command", d.CommandID)
		return topics.ResultMsg{}, false
	case err != nil && rctx.Err() != nil:
		// Sent, and no answer in time: what the agent did is unknown.
		return timeoutResult("the agent's node did not answer in time"), true
	case err != nil:
		m.Log.Warn("delivery to the agent's node", "node", node, "agent", d.AgentID, "err", err)
		return topics.ResultMsg{}, false
	case ans.Code == cluster.NotHere, ans.Code == cluster.Fenced:
		return topics.ResultMsg{}, false
	case ans.Code != "":
		return topics.ResultMsg{Status: topics.ResultError, Error: &topics.ErrorBody{Code: "internal", Message: "the agent's node answered " + ans.Code}}, true
	}
	var res topics.ResultMsg
	if err := json.Unmarshal(ans.Body, &res); err != nil {
		return topics.ResultMsg{Status: topics.ResultError, Error: &topics.ErrorBody{Code: CodeBadResult, Message: "the agent's node answered something unreadable"}}, true
	}
	return res, true
}

// ServeDelivery is the holder's side: it hands an agent connected here
// what another node decided and recorded, and answers with what the agent
// said. It writes nothing: the asking node audits.
func (m *Manager) ServeDelivery(ctx context.Context, d cluster.Delivery) cluster.Answer {
	if m.fenced() {
		return cluster.Answer{Code: cluster.Fenced}
	}
	if !m.Fleet.Online(d.AgentID) {
		return cluster.Answer{Code: cluster.NotHere}
	}
	if !wellFormed(d) {
		// Kept here, a session id that is no id would fail every drift
		// check's query from then on.
		m.Log.Warn("delivery from another node names something that is not an id; not handed on", "kind", d.Kind, "agent", d.AgentID)
		return cluster.Answer{Code: cluster.Malformed}
	}
	switch d.Kind {
	case cluster.DeliverCommand:
		m.awaitSubscribed(ctx, d.AgentID, min(m.ReconnectWait, time.Until(d.Deadline)))
		res, here, err := m.exchangeHere(ctx, d)
		if !here {
			return cluster.Answer{Code: cluster.NotHere}
		}
		if err != nil {
			m.Log.Error("routed command not sent", "command", d.CommandID, "err", err)
			res = topics.ResultMsg{Status: topics.ResultError, Error: &topics.ErrorBody{Code: "internal", Message: "the agent's node could not send the command"}}
		}
		b, err := json.Marshal(res)
		if err != nil {
			return cluster.Answer{Code: "internal"}
		}
		if len(b) > cluster.MaxPayload-maxDeliveryHeader {
			// Only a broker packet limit raised past the cluster's payload
			// makes one; the answer says so rather than never arriving.
			m.Log.Error("routed result over the cluster's max payload", "command", d.CommandID, "bytes", len(b))
			b, _ = json.Marshal(topics.ResultMsg{V: res.V, CommandID: res.CommandID, SessionID: res.SessionID, AgentID: res.AgentID,
				Status: topics.ResultError, Error: &topics.ErrorBody{Code: "result_too_large", Message: "the result is larger than the cluster carries between nodes"}})
		}
		return cluster.Answer{Body: b}
	case cluster.DeliverActivation:
		return m.openHere(ctx, d)
	case cluster.DeliverProbe:
		b, err := json.Marshal(cluster.Probe{KillSwitch: m.Fleet.KillSwitch(d.AgentID)})
		if err != nil {
			return cluster.Answer{Code: "internal"}
		}
		return cluster.Answer{Body: b}
	}
	return cluster.Answer{Code: "unknown_kind"}
}

// wellFormed reports whether the ids a command or an activation names are
// ids, in their canonical form (the keys this node's maps use).
func wellFormed(d cluster.Delivery) bool {
	isID := func(s string) bool { id, ok := input.ID(s); return ok && id == s }
	switch d.Kind {
	case cluster.DeliverCommand:
		return isID(d.SessionID) && isID(d.CommandID)
	case cluster.DeliverActivation:
		return isID(d.SessionID) && isID(d.TenantID)
	}
	return true
}

// awaitSubscribed waits up to wait for an agent connected here to take
// up its commands (it does so after acknowledging an activation).
func (m *Manager) awaitSubscribed(ctx context.Context, agentID string, wait time.Duration) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for !m.subscribed(agentID) {
		select {
		case <-tick.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// openHere opens on this broker a session another node committed for an
// agent connected here, and waits for the agent's ack. The session is kept
// live here too: a reconnect here re-publishes it, the drift check keeps
// its ACL open, and its end (broadcast) closes it.
func (m *Manager) openHere(ctx context.Context, d cluster.Delivery) cluster.Answer {
	if !time.Now().Before(d.Deadline) {
		// Its sender has stopped waiting and ends the session
		// unreachable: opening it now would activate an ended session.
		m.Log.Warn("activation reached this node past its deadline; not opened", "agent", d.AgentID, "session", d.SessionID)
		return cluster.Answer{Code: cluster.Expired}
	}
	l := &live{id: d.SessionID, tenantID: d.TenantID, agentID: d.AgentID, operator: d.Operator, createdAt: d.CreatedAt, expiresAt: d.ExpiresAt}
	ackCh := make(chan topics.ActivationAckMsg, 4)
	m.mu.Lock()
	// The database keeps one live session per agent: an entry here for
	// another is one whose end this node has not heard of yet.
	m.live[d.AgentID] = l
	m.acks[d.SessionID] = waiter{agentID: d.AgentID, sessionID: d.SessionID, acks: ackCh}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.acks, d.SessionID)
		m.mu.Unlock()
	}()
	if !m.openOnBroker(l, d.Reason) {
		return cluster.Answer{Code: cluster.Ended}
	}
	// Each NATS subscription runs its own callbacks, so the end of this
	// session may have been applied here before this delivery, sent ahead
	// of it, found an entry to close. Read the record once the session is
	// open, as takeOver does: an end committed later is broadcast to the
	// entry now here.
	if ended, err := m.endedInRecord(ctx, d.SessionID); err != nil {
		m.Log.Warn("re-read a session opened for another node", "session", d.SessionID, "err", err)
	} else if ended {
		m.ApplyEnded(Ended{ID: d.SessionID, TenantID: d.TenantID, AgentID: d.AgentID})
		return cluster.Answer{Code: cluster.Ended}
	}
	timer := time.NewTimer(time.Until(d.Deadline))
	defer timer.Stop()
	select {
	case ack := <-ackCh:
		b, err := json.Marshal(ack)
		if err != nil {
			return cluster.Answer{Code: "internal"}
		}
		return cluster.Answer{Body: b}
	case <-timer.C:
		return cluster.Answer{Code: cluster.Unacknowledged}
	case <-ctx.Done():
		return cluster.Answer{Code: cluster.Unacknowledged}
	}
}

// open opens a committed session where its agent is: on this broker, or
// through the node holding it, whose agent's ack comes back on acks.
// failed is told (cluster.Ended, EndNoAck when the holder handed it to an
// agent that stayed silent, or CodeAgentUnreachable when the holder did
// not open it or never answered) when a routed activation fails; acks is
// told its agent's ack. It reports false when an end took the session
// away, and how long the caller waits for acks or failed: a routed
// activation's outcome comes from the holder, whose answer may take its
// deadline and the grace.
func (m *Manager) open(ctx context.Context, l *live, reason string, acks chan<- topics.ActivationAckMsg, failed chan<- string) (bool, time.Duration) {
	node := m.heldElsewhere(ctx, l.agentID)
	if node == "" {
		return m.openOnBroker(l, reason), m.AckTimeout
	}
	m.mu.Lock()
	ended := l.ended
	m.mu.Unlock()
	if ended {
		return false, 0
	}
	m.publishTenant(l.tenantID)
	d := cluster.Delivery{Kind: cluster.DeliverActivation, AgentID: l.agentID, SessionID: l.id, TenantID: l.tenantID,
		Operator: l.operator, Reason: reason, CreatedAt: l.createdAt, ExpiresAt: l.expiresAt, Deadline: time.Now().Add(m.AckTimeout)}
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		for attempt := 0; attempt < 2; attempt++ {
			if attempt > 0 {
				var found bool
				node, found = m.findHolder(ctx, l.agentID, min(m.ReconnectWait, time.Until(d.Deadline)), node)
				if !found {
					break
				}
				if node == "" {
					// It came here meanwhile; its ack arrives here.
					if !m.openOnBroker(l, reason) {
						failed <- cluster.Ended
					}
					return
				}
			}
			rctx, cancel := context.WithDeadline(ctx, d.Deadline.Add(routeGrace))
			ans, err := m.Route.Deliver(rctx, node, d)
			cancel()
			switch {
			case err == nil && ans.Code == "":
				var ack topics.ActivationAckMsg
				if json.Unmarshal(ans.Body, &ack) == nil {
					acks <- ack
				}
				return
			case err == nil && ans.Code == cluster.Ended:
				failed <- cluster.Ended
				return
			case err == nil && ans.Code == cluster.Unacknowledged:
				// Handed to the agent, which stayed silent.
				failed <- EndNoAck
				return
			case err == nil && (ans.Code == cluster.NotHere || ans.Code == cluster.Fenced), errors.Is(err, cluster.ErrNoResponder):
				m.Log.Warn("the agent's node did not open the session", "node", node, "agent", l.agentID, "code", ans.Code, "err", err)
				continue
			case err == nil && ans.Code == cluster.Expired:
				// It reached the holder past its deadline (the holder was
				// frozen with it) and was not opened there.
				m.Log.Warn("the agent's node had the activation only past its deadline", "node", node, "agent", l.agentID)
				failed <- CodeAgentUnreachable
				return
			case ctx.Err() != nil:
				return // the caller is gone: Activate ends the session
			default:
				// No answer by the deadline (the holder froze, or died with
				// the request): it may never have reached the agent.
				m.Log.Warn("the agent's node gave no answer to an activation", "node", node, "agent", l.agentID, "code", ans.Code, "err", err)
				failed <- CodeAgentUnreachable
				return
			}
		}
		failed <- CodeAgentUnreachable
	}()
	// Past the holder's answer, a backstop only: the worker always tells.
	return true, m.AckTimeout + routeGrace + time.Second
}
