package cluster

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/topics"
)

// mirrorOf returns a mirror of node holding n agents' status as its own
// word, and the items.
func mirrorOf(t testing.TB, node string, n int) (*StatusMirror, []StatusItem) {
	m := NewStatusMirror(node, &recorder{}, nil)
	at := time.Now().UTC()
	items := make([]StatusItem, n)
	for i := range items {
		id := fmt.Sprintf("0b6c1f1e-8f0a-4c2e-9d55-%012d", i)
		b, err := json.Marshal(topics.AgentStatusMsg{V: 1, AgentID: id, TenantID: "7c0a1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10", Online: true,
			Version: "1.4.2", State: topics.StateDormant, LastSeen: at, Time: at})
		require.NoError(t, err)
		items[i] = StatusItem{Topic: topics.StatusRoot + "agents/" + id, Payload: b}
		m.offer(node, items[i], fromHere)
	}
	return m, items
}

// A share's digest is the same on two nodes holding the same copy, and
// differs once one message in it does.
func TestResync_DigestsDifferOnlyWhereCopiesDo(t *testing.T) {
	a, items := mirrorOf(t, "a", 200)
	b := NewStatusMirror("b", &recorder{}, nil)
	for _, it := range items {
		b.offer("a", it, fromOrigin)
	}
	for share := range 4 {
		an, asum, _ := a.digestOf("a", share, 4)
		bn, bsum, _ := b.digestOf("a", share, 4)
		require.Equal(t, an, bn)
		require.Equal(t, asum, bsum, "share %d", share)
	}
	lost := items[17]
	var st topics.AgentStatusMsg
	require.NoError(t, json.Unmarshal(lost.Payload, &st))
	st.Online, st.Time = false, st.Time.Add(time.Second)
	p, err := json.Marshal(st)
	require.NoError(t, err)
	a.offer("a", StatusItem{Topic: lost.Topic, Payload: p}, fromHere) // b never hears of it
	place, _ := hashes(lost)
	changed := int(place % 4)
	for share := range 4 {
		_, asum, _ := a.digestOf("a", share, 4)
		_, bsum, _ := b.digestOf("a", share, 4)
		assert.Equal(t, share != changed, asum == bsum, "share %d", share)
	}
}

// Over one period, the shares of a node's own word cover every topic it
// holds once, and none that another node said last.
func TestResync_SharesCoverOwnWordOnce(t *testing.T) {
	m, items := mirrorOf(t, "a", 500)
	other := agentItem(t, true, time.Now().UTC())
	m.offer("b", other, fromOrigin)
	seen := map[string]int{}
	for share := range 7 {
		for _, it := range m.ownShare(share, 7) {
			seen[it.Topic]++
		}
	}
	assert.Len(t, seen, len(items))
	for _, it := range items {
		assert.Equal(t, 1, seen[it.Topic], it.Topic)
	}
	assert.Zero(t, seen[other.Topic], "another node's word is its to send")
}

// What one re-sync period costs a node holding 20,000 agents and another
// holding the same copy: the sender's shares and digests, the receiver's
// comparisons, and the bytes on the wire.
func BenchmarkResync_20000AgentsInAgreement(b *testing.B) {
	const shares = 60 // 30 s in 500 ms ticks
	sender, items := mirrorOf(b, "a", 20000)
	receiver := NewStatusMirror("b", &recorder{}, nil)
	for _, it := range items {
		receiver.offer("a", it, fromOrigin)
	}
	b.ResetTimer()
	var wire, differ int
	for range b.N {
		wire, differ = 0, 0
		for share := range shares {
			n, sum, _ := sender.digestOf("a", share, shares)
			data, err := json.Marshal(statusDigest{From: "a", Share: share, Shares: shares, Count: n, Sum: sum})
			require.NoError(b, err)
			wire += len(data)
			if rn, rsum, _ := receiver.digestOf("a", share, shares); rn != n || rsum != sum {
				differ++
			}
		}
	}
	require.Zero(b, differ, "copies in agreement have equal digests")
	b.ReportMetric(float64(wire), "wire-bytes/period")
}

// The same period when every message differed: what a share asked for
// costs (the messages, their JSON and the receiver's reading of them).
func BenchmarkResync_20000AgentsAllAskedFor(b *testing.B) {
	const shares = 60
	sender, items := mirrorOf(b, "a", 20000)
	receiver := NewStatusMirror("b", &recorder{}, nil)
	for _, it := range items {
		receiver.offer("a", it, fromOrigin)
	}
	b.ResetTimer()
	var wire int
	for range b.N {
		wire = 0
		for share := range shares {
			own := sender.ownShare(share, shares)
			for len(own) > 0 {
				n := min(len(own), 700) // ~maxBatch at ~370 bytes an item
				data, err := json.Marshal(statusBatch{From: "a", Items: own[:n]})
				require.NoError(b, err)
				wire += len(data)
				receiver.receive(&nats.Msg{Data: data})
				own = own[n:]
			}
		}
	}
	b.ReportMetric(float64(wire), "wire-bytes/period")
}

// The digests kept as messages are stored are the ones a scan of every
// message held gives, through new topics, replaced messages and another
// node's word taking a topic over.
func TestResync_KeptDigestsAreTheScannedOnes(t *testing.T) {
	const shares = 5
	m, items := mirrorOf(t, "a", 300) // before the digests are kept
	m.keepDigests(shares)
	for i, it := range items[:120] {
		var st topics.AgentStatusMsg
		require.NoError(t, json.Unmarshal(it.Payload, &st))
		st.Time = st.Time.Add(time.Second)
		st.Online = i%2 == 0
		p, err := json.Marshal(st)
		require.NoError(t, err)
		origin := "a"
		if i%3 == 0 {
			origin = "b" // the agent moved: node b's word now
		}
		m.offer(origin, StatusItem{Topic: it.Topic, Payload: p}, fromOrigin)
	}
	m.offer("c", agentItem(t, true, time.Now().UTC().Add(time.Hour)), fromOrigin)

	scan := func(origin string, share int) (int, uint64) {
		m.mu.Lock()
		defer m.mu.Unlock()
		var n int
		var sum uint64
		for topic, h := range m.held {
			if h.origin == origin && !isFeed(topic) && int(h.place%uint32(shares)) == share {
				n++
				sum += h.sum
			}
		}
		return n, sum
	}
	for _, origin := range []string{"a", "b", "c"} {
		for share := range shares {
			n, sum, _ := m.digestOf(origin, share, shares)
			wn, wsum := scan(origin, share)
			assert.Equal(t, wn, n, "%s share %d: count", origin, share)
			assert.Equal(t, wsum, sum, "%s share %d: sum", origin, share)
		}
	}
}
