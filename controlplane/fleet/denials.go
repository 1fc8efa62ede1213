package fleet

import "time"

// deniedMin is the size of the denial table below which it is never
// pruned.
const deniedMin = 1024

// denials rate-limits the audit rows of ACL refusals: at most one per
// client per denialAuditEvery, counting those it held back. A client's
// window past its minute holds nothing the next refusal needs but the
// count, so the table drops such windows whenever it has doubled since
// it last did: watchers choose their own client ids, and one that
// reconnects under a new id each time must not grow it without bound.
type denials struct {
	win     map[string]*denialWindow
	pruneAt int
}

type denialWindow struct {
	last       time.Time
	suppressed int
}

func newDenials() *denials {
	return &denials{win: map[string]*denialWindow{}, pruneAt: deniedMin}
}

// admit reports whether a refusal of clientID at now is to be audited,
// and how many of its refusals were held back since its last audit row.
func (d *denials) admit(clientID string, now time.Time) (audit bool, suppressed int) {
	w := d.win[clientID]
	if w == nil {
		if len(d.win) >= d.pruneAt {
			d.prune(now)
		}
		w = &denialWindow{}
		d.win[clientID] = w
	}
	if now.Sub(w.last) < denialAuditEvery {
		w.suppressed++
		return false, 0
	}
	suppressed = w.suppressed
	w.last, w.suppressed = now, 0
	return true, suppressed
}

// prune drops the windows past their minute. A count of refusals held
// back in one is lost with it; the audit row before them names the
// client and the topic.
func (d *denials) prune(now time.Time) {
	for id, w := range d.win {
		if now.Sub(w.last) >= denialAuditEvery {
			delete(d.win, id)
		}
	}
	d.pruneAt = max(2*len(d.win), deniedMin)
}
