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

// WaitIdle waits until no command is in flight on this node, or ctx is
// done; it returns how many were still running then. A draining node
// calls it before it sends its agents away, so their commands finish
// where they were sent.
func (m *Manager) WaitIdle(ctx context.Context) int {
	for {
		n := m.InFlight()
		if n == 0 {
			return 0
		}
		select {
		case <-m.ran:
		case <-ctx.Done():
			return m.InFlight()
		}
	}
}
