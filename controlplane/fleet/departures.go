package fleet

import "time"

// departures is when each agent last left this node, while it is away.
// Past goneMax entries, those older than goneFor are dropped; the scan
// for them runs again only once the entries have doubled since, so a
// drain or an outage that sends many agents away at once costs each
// departure a constant share of a scan, not a scan of its own.
type departures struct {
	at map[string]time.Time
	// sweepPast is the size past which the next scan runs.
	sweepPast int
}

func newDepartures() departures {
	return departures{at: map[string]time.Time{}, sweepPast: goneMax}
}

// left records that id left at t.
func (d *departures) left(id string, t time.Time) {
	d.at[id] = t
	if len(d.at) <= d.sweepPast {
		return
	}
	for id, when := range d.at {
		if t.Sub(when) > goneFor {
			delete(d.at, id)
		}
	}
	d.sweepPast = max(goneMax, 2*len(d.at))
}

// back forgets id's departure.
func (d *departures) back(id string) { delete(d.at, id) }

// since is when id left, if it is still away and remembered.
func (d *departures) since(id string) (time.Time, bool) {
	t, ok := d.at[id]
	return t, ok
}
