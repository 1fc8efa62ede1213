package cluster_test

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/cluster"
)

const secret = "0123456789abcdef0123456789abcdef-one"

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

func node(t testing.TB, id, secret, listen string, peers ...string) *cluster.Wire {
	t.Helper()
	w, err := cluster.Connect(context.Background(), cluster.WireConfig{
		Name: "test", NodeID: id, Secret: secret, Listen: listen, Peers: peers, Log: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return w
}

func changes(t *testing.T, w *cluster.Wire) <-chan cluster.Change {
	ch := make(chan cluster.Change, 16)
	require.NoError(t, w.OnChange(func(c cluster.Change) { ch <- c }))
	return ch
}

// Nodes with the cluster's secret hear each other's broadcasts and not
// their own; a node with another secret is refused its route and hears
// nothing, and sends nothing anyone hears.
func TestWire_OnlyNodesWithTheSecretAreRouted(t *testing.T) {
	a1, a2, a3 := freeAddr(t), freeAddr(t), freeAddr(t)
	n1 := node(t, "n1", secret, a1, a2)
	n2 := node(t, "n2", secret, a2, a1)
	intruder := node(t, "n3", "another-cluster-secret-0123456789abcdef", a3, a1, a2)
	require.NoError(t, n1.AnswerPings())
	require.NoError(t, n2.AnswerPings())

	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual([]string{"n2"}, n1.Peers()) && assert.ObjectsAreEqual([]string{"n1"}, n2.Peers())
	}, 10*time.Second, 20*time.Millisecond)
	c1, c2, c3 := changes(t, n1), changes(t, n2), changes(t, intruder)
	// Subscriptions propagate over routes asynchronously: the ping answers
	// once n2's interest is known to n1.
	require.Eventually(t, func() bool { return n1.Reachable(context.Background(), "n2", 200*time.Millisecond) }, 10*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return n2.Reachable(context.Background(), "n1", 200*time.Millisecond) }, 10*time.Second, 50*time.Millisecond)

	n1.Broadcast(cluster.Change{Kind: cluster.AgentRevoked, AgentID: "agent-1"})
	select {
	case c := <-c2:
		assert.Equal(t, cluster.Change{Kind: cluster.AgentRevoked, AgentID: "agent-1", From: "n1"}, c)
	case <-time.After(5 * time.Second):
		t.Fatal("n2 did not hear n1's broadcast")
	}
	intruder.Broadcast(cluster.Change{Kind: cluster.AgentRevoked, AgentID: "forged"})
	n2.Broadcast(cluster.Change{Kind: cluster.SessionEnded, SessionID: "s-1"})
	select {
	case c := <-c1:
		assert.Equal(t, "s-1", c.SessionID, "the intruder's broadcast reached no one; n2's did")
	case <-time.After(5 * time.Second):
		t.Fatal("n1 did not hear n2's broadcast")
	}
	assert.Empty(t, intruder.Peers(), "the intruder holds no route")
	assert.False(t, intruder.Reachable(context.Background(), "n1", 300*time.Millisecond))
	select {
	case c := <-c3:
		t.Fatalf("the intruder heard %+v", c)
	case c := <-c1:
		t.Fatalf("n1 heard %+v", c)
	case c := <-c2:
		t.Fatalf("n2 heard its own broadcast, or the intruder's: %+v", c)
	case <-time.After(300 * time.Millisecond):
	}
}

// A node's connection may touch its cluster's subjects only: a secret
// that leaks through one node's account still opens nothing else on a
// shared NATS.
func TestWire_NodeConnectionIsLimitedToTheClustersSubjects(t *testing.T) {
	n := node(t, "n1", secret, freeAddr(t))
	nc := n.Conn()
	errs := make(chan error, 4)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })
	_, err := nc.SubscribeSync("other.>")
	require.NoError(t, err, "refused asynchronously")
	select {
	case err := <-errs:
		assert.ErrorContains(t, err, "Permissions Violation")
	case <-time.After(5 * time.Second):
		t.Fatal("a subscription outside the cluster's subjects was not refused")
	}
	require.NoError(t, nc.Publish("other.subject", []byte("x")))
	select {
	case err := <-errs:
		assert.ErrorContains(t, err, "Permissions Violation")
	case <-time.After(5 * time.Second):
		t.Fatal("a publish outside the cluster's subjects was not refused")
	}
}
