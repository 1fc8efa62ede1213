package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// inlineBroker is a real mochi broker with only its in-process client,
// as the mirror publishes on it.
type inlineBroker struct {
	srv *mqtt.Server
	cl  *mqtt.Client
}

func (b inlineBroker) Publish(topic string, payload []byte, retain bool, qos byte, props *packets.Properties) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain}, TopicName: topic, Payload: payload}
	if props != nil {
		pk.Properties = *props
	}
	return b.srv.InjectPacket(b.cl, pk)
}

func mirrorBroker(t *testing.T, node string) (*mqtt.Server, *cluster.StatusMirror) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	m := cluster.NewStatusMirror(node, nil, nil)
	require.NoError(t, srv.AddHook(m.Hook(), nil))
	cl := srv.NewClient(nil, mqtt.LocalListener, "control", true)
	cl.Properties.ProtocolVersion = 5
	m.SetPublisher(inlineBroker{srv, cl})
	t.Cleanup(func() { _ = srv.Close() })
	return srv, m
}

func agentStatus(t *testing.T, i int, online bool) (string, []byte) {
	id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	b, err := json.Marshal(topics.AgentStatusMsg{V: topics.Version, AgentID: id, TenantID: "10000000-0000-4000-8000-000000000000",
		Online: online, State: topics.StateDormant, Version: "1.4.2", Time: time.Now().UTC(), LastSeen: time.Now().UTC()})
	require.NoError(t, err)
	return topics.StatusRoot + "agents/" + id, b
}

// A node that joins late gets every agent's status from the node that
// published them, through the real brokers' hooks and a real NATS route;
// what it hears from then on it stores, unmarked, without sending it
// back. ARGUS_TEST_SNAPSHOT_AGENTS sets how many agents (10,000).
func TestStatusMirror_LateJoinerGetsEveryAgentThenFollows(t *testing.T) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("ARGUS_TEST_SNAPSHOT_AGENTS")); err == nil && v > 0 {
		n = v
	}
	pool := testenv.Pool(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.DiscardHandler)
	a1, a2 := freeAddr(t), freeAddr(t)

	srv1, m1 := mirrorBroker(t, "n1")
	w1 := node(t, "n1", secret, a1, a2)
	require.NoError(t, m1.Attach(w1))
	require.NoError(t, cluster.NewMembership(pool, cluster.Self{ID: "n1"}, 0, 0, log).Join(ctx))
	go m1.Run(ctx, pool, 200*time.Millisecond)
	for i := range n {
		topic, b := agentStatus(t, i, true)
		require.NoError(t, srv1.Publish(topic, b, true, 0))
	}
	require.Equal(t, int64(n), int64(srv1.Topics.Retained.Len()), "n1 retains what it published")

	heapBefore := heapInUse()
	srv2, m2 := mirrorBroker(t, "n2")
	start := time.Now()
	w2 := node(t, "n2", secret, a2, a1)
	require.NoError(t, m2.Attach(w2))
	require.NoError(t, cluster.NewMembership(pool, cluster.Self{ID: "n2"}, 0, 0, log).Join(ctx))
	go m2.Run(ctx, pool, 200*time.Millisecond)
	require.Eventually(t, func() bool { return srv2.Topics.Retained.Len() == n }, 30*time.Second, 10*time.Millisecond)
	t.Logf("late joiner held %d agents' status %v after it started; its broker and mirror hold %d bytes per agent",
		n, time.Since(start).Round(time.Millisecond), (heapInUse()-heapBefore)/uint64(n))

	// Live: an agent leaves n1; n2 stores it, with no mark left on it.
	topic, b := agentStatus(t, 7, false)
	heard := make(chan packets.Packet, 16)
	require.NoError(t, srv2.Subscribe(topic, 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		select {
		case heard <- pk:
		default:
		}
	}))
	require.NoError(t, srv1.Publish(topic, b, true, 0))
	deadline := time.After(5 * time.Second)
	for {
		select {
		case pk := <-heard:
			if pk.TopicName != topic || string(pk.Payload) != string(b) {
				continue
			}
			assert.Empty(t, pk.Properties.User, "the mirror's mark is removed before delivery")
			got, ok := m2.Held(topic)
			require.True(t, ok)
			assert.JSONEq(t, string(b), string(got))
			// n1 still holds its own (nothing older came back from n2).
			got, _ = m1.Held(topic)
			assert.JSONEq(t, string(b), string(got))
			return
		case <-deadline:
			t.Fatal("n2 did not hear the agent leave n1")
		}
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
