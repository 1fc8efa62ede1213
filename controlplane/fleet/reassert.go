package fleet

import (
	"context"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/argus-remote/argus/controlplane/agents"
)

const (
	// presenceCheckEvery is how often the record of the agents connected
	// here is compared with the connections themselves.
	presenceCheckEvery = 5 * time.Second
	// presenceRepairMax bounds the rows one check reads and writes (in
	// one statement each); the rest wait for the next check.
	presenceRepairMax = 4096
)

// SetFenced tells the watcher whether this node holds no valid lease:
// a fenced node's agents are recorded elsewhere by now (or are about to
// be), so it re-asserts none of them.
func (w *Watcher) SetFenced(fenced bool) { w.fenced.Store(fenced) }

// checkPresence repairs the record of the agents connected here, in the
// database worker (after every connect and disconnect queued before it,
// and before any queued after: no other write of this node's rows runs
// meanwhile). A connection whose row is gone (or older) is recorded again
// under its own epoch; one whose row names a newer connection on another
// node is stale (the agent is there) and is closed here; one whose
// connect was never recorded (its write failed) is recorded as the
// connect would have done; a row naming this node for an agent not
// connected here (its disconnect's write failed) is deleted, as that
// write would have done. The rows are read only when their digest
// differs from this node's connections'.
func (w *Watcher) checkPresence(ctx context.Context) {
	if w.fenced.Load() || w.handover.Load() {
		return
	}
	w.mu.Lock()
	here := make(map[string]*conn, len(w.online))
	// An agent connected here whose connect is not recorded yet: its row
	// (if any) is an older connection's, which that connect replaces.
	pending := map[string]bool{}
	var sum uint64
	digestable := true
	for id, c := range w.online {
		if !c.tried {
			pending[id] = true
			continue
		}
		here[id] = c
		if *c.epoch == 0 {
			digestable = false // its row is to be written
		}
		sum = agents.AddPresenceHash(sum, agents.PresenceHash(id, *c.epoch))
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, presenceCheckEvery)
	defer cancel()
	if digestable {
		// A failed digest is no answer: the rows are read.
		if n, rsum, err := w.store.PresenceDigest(ctx, w.node); err == nil && n == len(here) && rsum == sum {
			return // the record is right
		}
	}
	held, err := w.store.EpochsHeldBy(ctx, w.node)
	if err != nil {
		w.log.Warn("presence check", "err", err)
		return
	}
	w.clearStray(ctx, held, here, pending)
	if len(here) == 0 {
		return
	}
	var off []string
	for id, c := range here {
		if e, ok := held[id]; ok && e == *c.epoch {
			continue
		}
		off = append(off, id)
		if len(off) == presenceRepairMax {
			break
		}
	}
	if len(off) == 0 {
		return
	}
	rows, err := w.store.PresencesOf(ctx, off)
	if err != nil {
		w.log.Warn("presence check", "err", err)
		return
	}
	var again []agents.Reassertion
	for _, id := range off {
		if ctx.Err() != nil {
			break // the next check goes on
		}
		c := here[id]
		w.mu.Lock()
		still := w.online[id] == c
		w.mu.Unlock()
		if !still {
			continue // gone meanwhile: its disconnect is queued
		}
		row, hasRow := rows[id]
		switch {
		case hasRow && row.NodeID != w.node && (*c.epoch != 0 && row.Epoch > *c.epoch || *c.epoch == 0 && row.ConnectedAt.After(c.connectedAt)):
			// The agent connected again elsewhere; this connection has
			// not noticed yet. Commands go where the record says, so this
			// one serves nothing: close it (its disconnect leaves the
			// newer row alone).
			w.log.Warn("presence check: connection here is stale, the agent is recorded on another node; disconnecting it",
				"agent", id, "node", row.NodeID, "epoch", row.Epoch, "epoch_here", *c.epoch)
			go w.srv.DisconnectClient(c.cl, packets.ErrSessionTakenOver)
		case *c.epoch == 0:
			// Its connect's write failed: record it as the connect would.
			epoch, prev, _, err := w.store.ConnectedFrom(ctx, id, w.node, c.cl.Net.Remote, c.connectedAt)
			if err != nil {
				w.log.Error("presence check: record agent connect", "agent", id, "err", err)
				continue
			}
			w.mu.Lock()
			*c.epoch = epoch
			w.mu.Unlock()
			w.log.Warn("presence check: connection recorded late (its connect's write had failed)", "agent", id, "epoch", epoch)
			if w.OnPresent != nil {
				w.OnPresent(id, prev.NodeID)
			}
		default:
			// No row, or one older than this connection: record this one
			// again, under its own epoch.
			again = append(again, agents.Reassertion{AgentID: id, Remote: c.cl.Net.Remote, ConnectedAt: c.connectedAt, Epoch: *c.epoch})
		}
	}
	if len(again) == 0 {
		return
	}
	done, err := w.store.Reasserted(ctx, w.node, again)
	if err != nil {
		w.log.Error("presence check: re-assert", "agents", len(again), "err", err)
		return
	}
	// One not done had a newer connection recorded meanwhile: the next
	// check sees it. Each is named up to a few, then counted.
	const named = 16
	n := 0
	for _, r := range again {
		if !done[r.AgentID] {
			continue
		}
		if n++; n <= named {
			row := rows[r.AgentID]
			w.log.Warn("presence check: agent connected here had no current presence row; re-asserted", "agent", r.AgentID, "epoch", r.Epoch,
				"row_node", row.NodeID, "row_epoch", row.Epoch)
		}
	}
	if n > named {
		w.log.Warn("presence check: re-asserted more agents' presence rows", "agents", n-named)
	}
}

// clearStray deletes the rows that name this node for agents not
// connected here: a disconnect whose write failed left them, and they
// send other nodes' commands here to be told "not here".
func (w *Watcher) clearStray(ctx context.Context, held map[string]int64, here map[string]*conn, pending map[string]bool) {
	stray := map[string]int64{}
	for id, e := range held {
		if here[id] == nil && !pending[id] {
			stray[id] = e
			if len(stray) == presenceRepairMax {
				break
			}
		}
	}
	if len(stray) == 0 {
		return
	}
	n, err := w.store.ClearStray(ctx, w.node, stray)
	if err != nil {
		w.log.Error("presence check: clear rows of agents gone from here", "agents", len(stray), "err", err)
		return
	}
	if n > 0 {
		w.log.Warn("presence check: cleared rows that named this node for agents not connected here", "agents", n)
	}
}
