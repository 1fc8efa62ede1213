package server

import (
	"context"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// drain hands a cluster node's agents to the other nodes before it stops:
// it refuses new agent connections (MQTT v5 0x9C, use another server),
// lets the commands in flight finish (bounded by cluster-drain-timeout), then
// disconnects every client with 0x9C: the agents in a live session first,
// then the rest at cluster-drain-evict-rate a second, and no more than
// fleet.HandoverWindow ahead of what the others have recorded. Each
// reconnects elsewhere and its session goes on there
// (sessions.OnAgentPresent). The presence rows
// are left for the next node to replace, so it can tell where each
// agent came from. A node alone keeps its agents until it stops: there
// is nowhere to send them. The API keeps answering for DrainDelay from
// the start, so the load balancer has stopped sending calls before the
// listener closes.
func (s *Server) drain(ctx context.Context) {
	if !s.cfg.Cluster.Multi() || !s.ready.Load() {
		// A start that failed part way has no agents to hand over, and no
		// load balancer has sent it a call.
		return
	}
	started := time.Now()
	s.draining.Store(true) // /readyz fails: the load balancer sends calls elsewhere
	s.broker.Redirect(true)
	s.sessions.Drain() // no new command is handed to an agent here
	s.log.Info("draining: new agent connections go to the other nodes", "in_flight", s.sessions.InFlight())
	cc := s.cfg.Cluster
	wctx, cancel := context.WithTimeout(ctx, cc.DrainTimeout)
	left := s.sessions.WaitIdle(wctx)
	cancel()
	if left > 0 {
		s.log.Warn("draining: commands still in flight after the bound; their agents are sent away anyway", "in_flight", left, "bound", cc.DrainTimeout)
	}
	s.fleet.Handover()
	held, heldErr := s.fleet.HeldHere(ctx)
	// Agents in a live session go first: a command for one waits for it
	// to move (command-reconnect-wait), and sending thousands of agents
	// away takes longer than that.
	first := 0
	for _, id := range s.policy.ActiveAgents() {
		if s.broker.Disconnect(id, packets.ErrUseAnotherServer) {
			first++
		}
	}
	// The rest are paced: the other nodes take in what they can; all at
	// once, 10,000 agents' handshakes time out there by the thousand. No
	// faster than the others record them either (fleet.HandoverWindow);
	// if they take none in for a handover bound, the rest go at the rate
	// alone.
	var ready func(context.Context, int)
	if heldErr == nil {
		stalled := false
		ready = func(ctx context.Context, sent int) {
			if stalled {
				return
			}
			wctx, cancel := context.WithTimeout(ctx, cc.HandoverTimeout)
			defer cancel()
			if !s.fleet.AwaitRoom(wctx, held, first+sent) && ctx.Err() == nil {
				s.log.Warn("draining: the other nodes took no agents in within the bound; sending the rest at the rate alone", "bound", cc.HandoverTimeout)
				stalled = true
			}
		}
	}
	n := first + s.broker.DisconnectPaced(ctx, packets.ErrUseAnotherServer, cc.DrainEvictRate, ready)
	// Handed over once the others have recorded the agents: until then
	// their presence rows still say where each came from.
	hctx, cancel := context.WithTimeout(ctx, cc.HandoverTimeout)
	left = s.fleet.AwaitHandedOver(hctx)
	cancel()
	if left > 0 {
		s.log.Warn("draining: agents not picked up by another node within the bound", "agents", left, "bound", cc.HandoverTimeout)
	}
	// Calls the load balancer sent before it saw /readyz fail are still
	// answered: the API closes only once it has had the time to see it.
	if wait := time.Until(started.Add(cc.DrainDelay)); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
	s.log.Info("drained: agents sent to the other nodes", "clients", n, "not_picked_up", left, "took", time.Since(started).Round(time.Millisecond))
}
