package cluster

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/topics"
)

const agentTopic = topics.StatusRoot + "agents/0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"

func agentItem(t *testing.T, online bool, at time.Time) StatusItem {
	t.Helper()
	b, err := json.Marshal(topics.AgentStatusMsg{V: 1, AgentID: "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10", Online: online, State: "dormant", Time: at})
	require.NoError(t, err)
	return StatusItem{Topic: agentTopic, Payload: b}
}

func online(h *held) bool {
	var st topics.AgentStatusMsg
	_ = json.Unmarshal(h.item.Payload, &st)
	return st.Online
}

// Which of two status messages a node keeps: the newer, except that one
// node's word that an agent left never hides its connection to another.
func TestDecide_NewerWinsAndALateEndElsewhereDoesNotHideAConnection(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name        string
		curOrigin   string
		cur         func(t *testing.T) StatusItem
		newOrigin   string
		next        func(t *testing.T) StatusItem
		kept, isNew bool
		wantOnline  bool
	}{
		{"newer from the same node", "a", func(t *testing.T) StatusItem { return agentItem(t, true, t0) },
			"a", func(t *testing.T) StatusItem { return agentItem(t, false, t0.Add(time.Second)) }, true, true, false},
		{"older from the same node", "a", func(t *testing.T) StatusItem { return agentItem(t, false, t0.Add(time.Second)) },
			"a", func(t *testing.T) StatusItem { return agentItem(t, true, t0) }, false, false, false},
		{"late end from the node it left", "b", func(t *testing.T) StatusItem { return agentItem(t, true, t0) },
			"a", func(t *testing.T) StatusItem { return agentItem(t, false, t0.Add(time.Second)) }, false, false, true},
		{"a connection elsewhere after an end, even timed earlier", "a", func(t *testing.T) StatusItem { return agentItem(t, false, t0.Add(time.Second)) },
			"b", func(t *testing.T) StatusItem { return agentItem(t, true, t0) }, true, true, true},
		{"the same message again", "a", func(t *testing.T) StatusItem { return agentItem(t, true, t0) },
			"a", func(t *testing.T) StatusItem { return agentItem(t, true, t0) }, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur, ok := decide(nil, tc.curOrigin, tc.cur(t), fromOrigin)
			require.True(t, ok)
			got, changed := decide(cur, tc.newOrigin, tc.next(t), fromOrigin)
			assert.Equal(t, tc.kept, changed)
			assert.Equal(t, tc.isNew, got != cur)
			assert.Equal(t, tc.wantOnline, online(got))
		})
	}
}

func feedItem(t *testing.T, ids ...int) StatusItem {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	msg := topics.FeedMsg{V: 1, TenantID: "t"}
	for _, id := range ids {
		msg.Entries = append(msg.Entries, topics.FeedEntry{CommandID: fmt.Sprint(id), Command: "ping", CompletedAt: t0.Add(time.Duration(id) * time.Second)})
	}
	b, err := json.Marshal(msg)
	require.NoError(t, err)
	return StatusItem{Topic: topics.StatusRoot + "tenants/0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10/commands", Payload: b}
}

func feedIDs(t *testing.T, h *held) []string {
	var f topics.FeedMsg
	require.NoError(t, json.Unmarshal(h.item.Payload, &f))
	var ids []string
	for _, e := range f.Entries {
		ids = append(ids, e.CommandID)
	}
	return ids
}

// A tenant's command feed is the union of every node's, newest first and
// bounded: commands completed through different nodes all show.
func TestDecide_CommandFeedsOfTwoNodesMerge(t *testing.T) {
	cur, _ := decide(nil, "a", feedItem(t, 3, 1), fromOrigin)
	got, changed := decide(cur, "b", feedItem(t, 2), fromOrigin)
	require.True(t, changed)
	assert.Equal(t, []string{"3", "2", "1"}, feedIDs(t, got))

	_, changed = decide(got, "a", feedItem(t, 3, 1), fromOrigin)
	assert.False(t, changed, "nothing new")

	many := make([]int, 0, topics.FeedMax)
	for i := 100; i < 100+topics.FeedMax; i++ {
		many = append(many, i)
	}
	got, changed = decide(got, "b", feedItem(t, many...), fromOrigin)
	require.True(t, changed)
	ids := feedIDs(t, got)
	assert.Len(t, ids, topics.FeedMax)
	assert.Equal(t, fmt.Sprint(100+topics.FeedMax-1), ids[0], "newest first")
}

// The common case: a node's next feed holds all of the one before it (or
// lacks only what falls past the bound): it is stored as it came, not
// rewritten. An unreadable feed changes nothing.
func TestDecide_AFeedThatExtendsTheOneHeldIsStoredAsItCame(t *testing.T) {
	cur, _ := decide(nil, "a", feedItem(t, 2, 1), fromOrigin)
	next := feedItem(t, 3, 2, 1)
	got, changed := decide(cur, "b", next, fromOrigin)
	require.True(t, changed)
	assert.Equal(t, string(next.Payload), string(got.item.Payload))

	full := make([]int, 0, topics.FeedMax)
	for i := 200 + topics.FeedMax; i > 200; i-- {
		full = append(full, i)
	}
	next = feedItem(t, full...)
	got, changed = decide(got, "a", next, fromOrigin)
	require.True(t, changed)
	assert.Equal(t, string(next.Payload), string(got.item.Payload), "3, 2 and 1 fall past the bound")

	bad := next
	bad.Payload = []byte(`{"entries": [`)
	kept, changed := decide(got, "a", bad, fromOrigin)
	assert.False(t, changed)
	assert.Same(t, got, kept)
	_, changed = decide(nil, "a", bad, fromOrigin)
	assert.False(t, changed, "not stored even when nothing is held")
}

// A node that died cannot say its agents left: each live node says so
// for itself, unless the agent has since connected elsewhere.
func TestRepair_AgentsOfADeadNodeGoOffline(t *testing.T) {
	pub := &recorder{}
	m := NewStatusMirror("c", pub, nil)
	m.offer("a", agentItem(t, true, time.Now().UTC()), fromOrigin)
	other := agentItem(t, true, time.Now().UTC())
	other.Topic = topics.StatusRoot + "agents/1b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"
	m.offer("b", other, fromOrigin)

	m.repair(map[string]bool{"b": true, "c": true})
	assert.False(t, online(m.held[agentTopic]), "agent of dead node a is offline")
	assert.True(t, online(m.held[other.Topic]), "agent of live node b is untouched")
	require.NotEmpty(t, pub.topics)
	assert.Equal(t, agentTopic, pub.topics[len(pub.topics)-1], "published on this node")
}

// recorder keeps the topics published on it, in order.
type recorder struct{ topics []string }

func (r *recorder) Publish(topic string, _ []byte, _ bool, _ byte, _ *packets.Properties) error {
	r.topics = append(r.topics, topic)
	return nil
}

// A node that restarted: the connections it held before are voided by
// the others; its own word then wins over that guess, a relayed copy of
// its old word does not; and its own old word passed back to it says
// the agent is gone, unless it already says otherwise itself.
func TestRepair_RestartedHolderVoidsItsOldConnectionsAndSpeaksForItself(t *testing.T) {
	t0 := time.Now().UTC().Add(-time.Minute)
	m := NewStatusMirror("b", &recorder{}, nil)
	m.offer("a", agentItem(t, true, t0), fromOrigin)
	m.repairWhere(func(h *held) bool { return h.origin == "a" })
	require.False(t, online(m.held[agentTopic]), "voided")
	assert.True(t, m.held[agentTopic].repaired)

	m.offer("a", agentItem(t, true, t0), relayed)
	assert.False(t, online(m.held[agentTopic]), "another node's copy of the old word does not undo the guess")
	m.offer("a", agentItem(t, true, t0), fromOrigin)
	assert.True(t, online(m.held[agentTopic]), "the holder's own word does")

	// Node a, restarted, hears its own old word from b.
	a := NewStatusMirror("a", &recorder{}, nil)
	old := agentItem(t, true, t0)
	it, ok := a.ownFromBefore(old)
	require.True(t, ok)
	a.offer("a", it, relayed)
	assert.False(t, online(a.held[agentTopic]), "its connection from before the restart is gone")
	a.offer("a", agentItem(t, true, time.Now().UTC()), fromHere)
	_, ok = a.ownFromBefore(old)
	assert.False(t, ok, "once it says so itself, what others pass back is ignored")
	assert.True(t, online(a.held[agentTopic]))
}
