package agent

import (
	"math/rand/v2"
	"net/url"
	"sync"
)

// brokers orders the agent's broker URLs. autopaho tries its URL list in
// one fixed order at each (re)connect; the agent gives it the list as
// slots and dials, for slot i, the i-th URL of a round shuffled afresh as
// slot 0 is tried, so a fleet spreads over the nodes and no node is every
// agent's first choice. A URL that sent the agent away (0x9C) goes last
// in the next round.
type brokers struct {
	mu      sync.Mutex
	slots   []*url.URL
	order   []*url.URL
	avoided *url.URL
	current *url.URL
}

func newBrokers(urls []*url.URL) *brokers {
	b := &brokers{slots: urls, order: append([]*url.URL(nil), urls...), current: urls[0]}
	return b
}

// pick returns the URL to dial for autopaho's slot u.
func (b *brokers) pick(slot *url.URL) *url.URL {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := -1
	for j, s := range b.slots {
		if s == slot {
			i = j
			break
		}
	}
	if i < 0 {
		b.current = slot
		return slot
	}
	if i == 0 {
		b.shuffleLocked()
	}
	b.current = b.order[i]
	return b.current
}

func (b *brokers) shuffleLocked() {
	rand.Shuffle(len(b.order), func(i, j int) { b.order[i], b.order[j] = b.order[j], b.order[i] })
	if b.avoided == nil || len(b.order) < 2 {
		return
	}
	for i, u := range b.order {
		if u == b.avoided {
			copy(b.order[i:], b.order[i+1:])
			b.order[len(b.order)-1] = u
			break
		}
	}
	b.avoided = nil
}

// dialled is the URL of the last connection attempt.
func (b *brokers) dialled() *url.URL {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.current
}

// avoid puts u last in the next round.
func (b *brokers) avoid(u *url.URL) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.avoided = u
}
