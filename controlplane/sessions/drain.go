package sessions

import "context"

// InFlight is how many commands (patches included) are running on this
// node now: requested, sent or awaited, and not yet recorded complete.
func (m *Manager) InFlight() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.runs)
}

func (m *Manager) ranOne() {
	select {
	case m.ran <- struct{}{}:
	default:
	}
}

// Drain starts sending this node's agents away: no new command is
// handed to an agent here (one asked of this node waits for its agent to
// be recorded on another, a routed one is answered "not here" so its
// node does the same), and WaitIdle then waits for those already handed
// over. Nothing undoes it: the node is stopping.
func (m *Manager) Drain() { m.draining.Store(true) }

// WaitIdle waits, once Drain was called, until no command is being
// exchanged with an agent here, or ctx is done; it returns how many were
// still in flight then. A draining node calls it before it sends its
// agents away, so their commands finish where they were sent.
func (m *Manager) WaitIdle(ctx context.Context) int {
	for {
		n := int(m.exchanging.Load())
		if n == 0 {
			return 0
		}
		select {
		case <-m.ran:
		case <-ctx.Done():
			return int(m.exchanging.Load())
		}
	}
}
