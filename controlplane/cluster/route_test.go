package cluster_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/cluster"
)

// routedPair is two nodes routed to each other, n2 serving deliveries
// with serve, once n1 sees n2's subscription.
func routedPair(t testing.TB, serve func(context.Context, cluster.Delivery) cluster.Answer) (n1, n2 *cluster.Wire) {
	t.Helper()
	a1, a2 := freeAddr(t), freeAddr(t)
	n1 = node(t, "n1", secret, a1, a2)
	n2 = node(t, "n2", secret, a2, a1)
	require.NoError(t, n2.AnswerPings())
	require.NoError(t, n2.ServeDeliveries(serve))
	require.Eventually(t, func() bool { return n1.Reachable(context.Background(), "n2", 200*time.Millisecond) }, 10*time.Second, 50*time.Millisecond)
	return n1, n2
}

// A delivery reaches the node it names with its payload and metadata
// whole, and its answer comes back whole, both over NATS's default 1 MiB:
// a result at the broker's 8 MiB cap crosses nodes. A node no one answers
// for is ErrNoResponder at once, not a timeout.
func TestRoute_DeliversToTheNamedNodeAndSaysWhenNoneAnswers(t *testing.T) {
	payload := make([]byte, 9<<20)
	_, _ = rand.Read(payload)
	answer := bytes.Repeat([]byte("r"), 9<<20)
	got := make(chan cluster.Delivery, 1)
	n1, _ := routedPair(t, func(_ context.Context, d cluster.Delivery) cluster.Answer {
		got <- d
		return cluster.Answer{Body: answer}
	})
	d := cluster.Delivery{Kind: cluster.DeliverCommand, AgentID: "agent-1", SessionID: "s-1", CommandID: "c-1", Name: "read_file",
		Deadline: time.Now().Add(5 * time.Second).UTC().Truncate(time.Millisecond), Trace: map[string]string{"traceparent": "00-x"}, Payload: payload}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := n1.Deliver(ctx, "n2", d)
	require.NoError(t, err)
	assert.Empty(t, a.Code)
	assert.True(t, bytes.Equal(answer, a.Body), "the 9 MiB answer came back whole")
	seen := <-got
	assert.True(t, bytes.Equal(payload, seen.Payload), "the 9 MiB payload arrived whole")
	seen.Payload, d.Payload = nil, nil
	seen.Deadline, d.Deadline = seen.Deadline.UTC(), d.Deadline.UTC()
	assert.Equal(t, d, seen)

	start := time.Now()
	_, err = n1.Deliver(ctx, "n3", d)
	assert.ErrorIs(t, err, cluster.ErrNoResponder)
	assert.Less(t, time.Since(start), time.Second, "no responder is known at once")
}

// An answer code (the holder no longer holds the agent) comes back as it
// was given.
func TestRoute_HolderCodeComesBack(t *testing.T) {
	n1, _ := routedPair(t, func(context.Context, cluster.Delivery) cluster.Answer {
		return cluster.Answer{Code: cluster.NotHere}
	})
	a, err := n1.Deliver(context.Background(), "n2", cluster.Delivery{Kind: cluster.DeliverCommand, Deadline: time.Now().Add(time.Second)})
	require.NoError(t, err)
	assert.Equal(t, cluster.NotHere, a.Code)
	assert.Empty(t, a.Body)
}

// BenchmarkRoute_8MiB measures an 8 MiB result crossing two routed
// embedded servers: in one message (max_payload raised, as Connect does)
// against eight 1 MiB chunks streamed to the requester's inbox (what the
// default max_payload would need). route.go's MaxPayload comment carries
// the figures.
func BenchmarkRoute_8MiB(b *testing.B) {
	result := bytes.Repeat([]byte("x"), 8<<20)
	b.Run("one_message", func(b *testing.B) {
		n1, _ := routedPair(b, func(context.Context, cluster.Delivery) cluster.Answer { return cluster.Answer{Body: result} })
		b.SetBytes(int64(len(result)))
		b.ResetTimer()
		for range b.N {
			a, err := n1.Deliver(context.Background(), "n2", cluster.Delivery{Kind: cluster.DeliverCommand, Deadline: time.Now().Add(10 * time.Second)})
			if err != nil || len(a.Body) != len(result) {
				b.Fatal(err, len(a.Body))
			}
		}
	})
	b.Run("chunks_1MiB", func(b *testing.B) {
		n1, n2 := routedPair(b, func(context.Context, cluster.Delivery) cluster.Answer { return cluster.Answer{} })
		const chunk = 1 << 20
		subj := n2.Subject("bench", "chunked")
		_, err := n2.Conn().Subscribe(subj, func(m *nats.Msg) {
			for i := 0; i < len(result); i += chunk {
				_ = n2.Conn().Publish(m.Reply, result[i:min(i+chunk, len(result))])
			}
		})
		require.NoError(b, err)
		require.NoError(b, n2.Conn().Flush())
		// Interest in subj reaches n1 over the route: the first chunk of
		// an answer says it has.
		require.Eventually(b, func() bool {
			_, err := n1.Conn().Request(subj, nil, time.Second)
			return err == nil
		}, 10*time.Second, 50*time.Millisecond)
		b.SetBytes(int64(len(result)))
		b.ResetTimer()
		for i := range b.N {
			inbox := n1.Subject("_INBOX", fmt.Sprint("bench", i))
			sub, err := n1.Conn().SubscribeSync(inbox)
			if err != nil {
				b.Fatal(err)
			}
			if err := n1.Conn().PublishRequest(subj, inbox, nil); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 0, len(result))
			for len(buf) < len(result) {
				m, err := sub.NextMsg(10 * time.Second)
				if err != nil {
					b.Fatal(err)
				}
				buf = append(buf, m.Data...)
			}
			_ = sub.Unsubscribe()
		}
	})
}

// An external NATS whose max_payload cannot carry a whole result is
// refused at connect, saying what to set; one configured for it is taken.
func TestConnect_ExternalNATSNeedsMaxPayloadForAResult(t *testing.T) {
	for _, tc := range []struct {
		maxPayload int32
		ok         bool
	}{{0, false}, {cluster.MaxPayload, true}} {
		ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, NoSigs: true, NoLog: true, MaxPayload: tc.maxPayload})
		require.NoError(t, err)
		ns.Start()
		t.Cleanup(ns.Shutdown)
		require.True(t, ns.ReadyForConnections(10*time.Second))
		w, err := cluster.Connect(context.Background(), cluster.WireConfig{Name: "test", NodeID: "n1", URLs: []string{ns.ClientURL()}})
		if !tc.ok {
			require.Error(t, err, "the default 1 MB is refused")
			assert.Contains(t, err.Error(), fmt.Sprintf("max_payload: %d", cluster.MaxPayload))
			continue
		}
		require.NoError(t, err)
		w.Close()
	}
}
