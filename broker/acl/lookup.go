package acl

import (
	"context"
	"time"
)

// maxBatch bounds the agents one credential read asks for.
const maxBatch = 1000

// stored is an agent's credential as the database holds it.
type stored struct {
	hash    []byte
	revoked bool
	tenant  string
}

type lookupResult struct {
	c     stored
	found bool
	err   error
}

// fetch returns id's stored credential. Agents whose credentials are
// not cached (a node taking in another node's agents, each new to it)
// wait together: the first starts a read, the ones that miss while it
// runs join the next, and one read is in flight at a time. A node taking
// in thousands of agents at once then makes a few reads of hundreds,
// not thousands of reads holding every database connection it has while
// its commands and presence writes wait for one.
func (p *Policy) fetch(ctx context.Context, id string) lookupResult {
	ch := make(chan lookupResult, 1)
	p.lmu.Lock()
	p.waiting[id] = append(p.waiting[id], ch)
	if !p.reading {
		p.reading = true
		go p.read()
	}
	p.lmu.Unlock()
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		return lookupResult{err: ctx.Err()}
	}
}

// read answers the waiting lookups, a batch at a time, until none wait.
func (p *Policy) read() {
	for {
		p.lmu.Lock()
		if len(p.waiting) == 0 {
			p.reading = false
			p.lmu.Unlock()
			return
		}
		batch := make(map[string][]chan lookupResult, min(len(p.waiting), maxBatch))
		for id, chs := range p.waiting {
			if len(batch) == maxBatch {
				break
			}
			batch[id] = chs
			delete(p.waiting, id)
		}
		p.lmu.Unlock()

		ids := make([]string, 0, len(batch))
		for id := range batch {
			ids = append(ids, id)
		}
		found := make(map[string]stored, len(ids))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.creds.Credentials(ctx, ids, func(id string, hash []byte, revoked bool, tenant string) {
			found[id] = stored{hash: hash, revoked: revoked, tenant: tenant}
		})
		cancel()
		for id, chs := range batch {
			c, ok := found[id]
			for _, ch := range chs {
				ch <- lookupResult{c: c, found: ok, err: err} // buffered: a waiter gone is no block
			}
		}
	}
}
