package cluster

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/argus-remote/argus/topics"
)

// feedBatch is the message a node sends the others as command n of a
// tenant completes through it: the tenant's feed of the last FeedMax
// commands, newest first, as feedCommand publishes it.
func feedBatch(b *testing.B, from string, n int) *nats.Msg {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	msg := topics.FeedMsg{V: topics.Version, TenantID: "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"}
	for i := n; i > n-topics.FeedMax && i >= 0; i-- {
		msg.Entries = append(msg.Entries, topics.FeedEntry{
			CommandID: fmt.Sprintf("5d6f0c1e-8a53-4c1b-9d7e-%012d", i), SessionID: "3b6cae22-0507-497c-91ac-fb86bb4d7490",
			AgentID: "2a7a66d5-e1f6-42e8-aab9-0350f2fa7c2d", Operator: "alice", Command: "ping", Summary: "liveness check",
			Outcome: "succeeded", CompletedAt: t0.Add(time.Duration(i) * time.Millisecond)})
	}
	msg.Time = msg.Entries[0].CompletedAt
	p, err := json.Marshal(msg)
	if err != nil {
		b.Fatal(err)
	}
	d, err := json.Marshal(statusBatch{From: from, Items: []StatusItem{{Topic: topics.StatusRoot + "tenants/" + msg.TenantID + "/commands", QoS: 1, Payload: p}}})
	if err != nil {
		b.Fatal(err)
	}
	return &nats.Msg{Data: d}
}

// BenchmarkStatusMirror_FeedFromAnotherNode is what every other node
// spends on each command completed in the cluster: taking in the
// tenant's feed as its node sent it.
func BenchmarkStatusMirror_FeedFromAnotherNode(b *testing.B) {
	m := NewStatusMirror("b", &recorder{}, nil)
	m.receive(feedBatch(b, "a", topics.FeedMax))
	const ahead = 256
	next := make([]*nats.Msg, 0, ahead)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(next) == 0 {
			b.StopTimer()
			for k := range ahead {
				next = append(next, feedBatch(b, "a", topics.FeedMax+1+i+k))
			}
			b.StartTimer()
		}
		m.receive(next[0])
		next = next[1:]
	}
}

// BenchmarkStatusMirror_RepairWithEveryNodeAlive is what each node's
// Run does twice a second in a 5-node cluster of 100,000 agents when no
// node has died: ask whether any agent held is a dead node's.
func BenchmarkStatusMirror_RepairWithEveryNodeAlive(b *testing.B) {
	m := NewStatusMirror("a", nil, nil)
	nodes := []string{"a", "b", "c", "d", "e"}
	at := time.Now().UTC()
	for i := range 100_000 {
		id := fmt.Sprintf("0b6c1f1e-8f0a-4c2e-9d55-%012d", i)
		p, err := json.Marshal(topics.AgentStatusMsg{V: topics.Version, AgentID: id, Online: true, State: "dormant", Time: at})
		if err != nil {
			b.Fatal(err)
		}
		m.offer(nodes[i%len(nodes)], StatusItem{Topic: topics.StatusRoot + "agents/" + id, Payload: p}, fromOrigin)
	}
	alive := map[string]bool{}
	for _, n := range nodes {
		alive[n] = true
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.repair(alive)
	}
}
