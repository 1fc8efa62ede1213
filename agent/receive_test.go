package agent

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/topics"
)

// admitAll is a broker policy for tests of the agent's own link.
type admitAll struct{}

func (admitAll) Authenticate(broker.ConnectRequest) bool { return true }
func (admitAll) Allow(_, _, _ string, _ bool) bool       { return true }

func startBroker(tb testing.TB) *broker.Broker {
	tb.Helper()
	b, err := broker.New(broker.Config{WSAddr: "127.0.0.1:0", Policy: admitAll{}, MaxPendingPerSource: -1})
	require.NoError(tb, err)
	require.NoError(tb, b.Start())
	tb.Cleanup(func() { _ = b.Close() })
	return b
}

// runConnected starts an agent against b and returns its id once it is
// connected.
func runConnected(ctx context.Context, tb testing.TB, b *broker.Broker, pub ed25519.PublicKey, i int) string {
	tb.Helper()
	st := State{AgentID: uuid.NewString(), Secret: "s", TenantID: uuid.NewString(), Tenant: "t", AgentName: fmt.Sprint("a", i),
		BrokerURL: b.URL(), ServerURL: "http://127.0.0.1:1", SigningPublicKey: topics.EncodePublicKey(pub), EnrolledAt: time.Now()}
	a, err := New(Config{StateDir: tb.TempDir(), HeartbeatInterval: time.Hour, ReconnectMax: 10 * time.Second, CameraTimeout: time.Second}, st, slog.New(slog.DiscardHandler))
	require.NoError(tb, err)
	a.DisableStatusFile()
	a.DisableKillSwitchWatch()
	events := make(chan Event, 16)
	a.Notify(events)
	go func() { _ = a.Run(ctx) }()
	for {
		select {
		case ev := <-events:
			if ev.Kind == "connected" {
				return st.AgentID
			}
		case <-time.After(10 * time.Second):
			tb.Fatal("the agent did not connect")
		}
	}
}

// The broker may have no more publishes unacknowledged at the agent than
// its inbox holds; unsaid, MQTT's limit is 65,535 and paho keeps a queue
// that long for every connection.
func TestAgent_ReceiveMaximumIsItsInbox(t *testing.T) {
	b := startBroker(t)
	pub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	id := runConnected(t.Context(), t, b, pub, 0)

	cl, ok := b.Server().Clients.Get(id)
	require.True(t, ok, "the broker holds the agent's client")
	require.Equal(t, uint16(inboxSize), cl.Properties.Props.ReceiveMaximum, "the CONNECT's Receive Maximum")
	require.False(t, cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0,
		"the CONNECT does not refuse problem information (mochi would strip its PUBLISHes' user properties)")
}

// BenchmarkAgent_HeapPerConnection reports the heap a connected, dormant
// agent holds (its broker link included).
func BenchmarkAgent_HeapPerConnection(b *testing.B) {
	br := startBroker(b)
	pub, _, err := ed25519.GenerateKey(nil)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 200
	var before, after runtime.MemStats
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			runConnected(ctx, b, br, pub, i)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n/1024, "KiB/agent")
}
