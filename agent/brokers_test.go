package agent

import (
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func brokerURLs(t *testing.T, raw ...string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, r := range raw {
		u, err := url.Parse(r)
		require.NoError(t, err)
		out = append(out, u)
	}
	return out
}

// Each round (autopaho trying its slots from the first) dials every URL
// once, in an order shuffled afresh: over many rounds each URL comes
// first about as often as the others.
func TestBrokers_EachRoundDialsEveryURLInRandomOrder(t *testing.T) {
	urls := brokerURLs(t, "ws://a:1/mqtt", "ws://b:1/mqtt", "ws://c:1/mqtt")
	b := newBrokers(urls)
	first := map[string]int{}
	const rounds = 3000
	for range rounds {
		seen := map[string]bool{}
		for i, slot := range urls {
			u := b.pick(slot)
			seen[u.Host] = true
			if i == 0 {
				first[u.Host]++
			}
		}
		require.Len(t, seen, 3, "a round dials each URL once")
	}
	for host, n := range first {
		assert.InDelta(t, rounds/3, n, rounds/10, "%s first in %d of %d rounds", host, n, rounds)
	}
}

// A URL that sent the agent away (0x9C) is tried last in the next round,
// and only in that one.
func TestBrokers_AvoidedURLGoesLastOnce(t *testing.T) {
	urls := brokerURLs(t, "ws://a:1/mqtt", "ws://b:1/mqtt", "ws://c:1/mqtt")
	b := newBrokers(urls)
	for range 200 {
		b.pick(urls[0])
		away := b.dialled()
		b.avoid(away)
		var order []*url.URL
		for _, slot := range urls {
			order = append(order, b.pick(slot))
		}
		assert.Same(t, away, order[2], "the server that said use another goes last")
	}
}

// One URL (the enrollment's) is dialled as before.
func TestBrokers_OneURL(t *testing.T) {
	urls := brokerURLs(t, "ws://only:1/mqtt")
	b := newBrokers(urls)
	b.avoid(urls[0])
	assert.Same(t, urls[0], b.pick(urls[0]))
}
