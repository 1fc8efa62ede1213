package broker_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/internal/mqtttest"
)

func start(t *testing.T, cfg broker.Config) *broker.Broker {
	t.Helper()
	cfg.WSAddr = "127.0.0.1:0"
	b, err := broker.New(cfg)
	require.NoError(t, err)
	require.NoError(t, b.Start())
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestBroker_RefusesEveryoneByDefault(t *testing.T) {
	b := start(t, broker.Config{})
	for _, o := range []mqtttest.Options{
		{ClientID: "anon"},
		{ClientID: "someone", Username: "someone", Password: "secret"},
	} {
		_, ack, err := mqtttest.Dial(t, b.URL(), o)
		require.Error(t, err)
		require.NotNil(t, ack, "a CONNACK with a reason code is sent")
		assert.Equal(t, byte(0x86), ack.ReasonCode, "bad user name or password")
	}
}

// allowPolicy admits one user and lets it touch one topic.
type allowPolicy struct{}

func (allowPolicy) Authenticate(r broker.ConnectRequest) bool {
	return r.ClientID == "c1" && r.Username == "u1" && string(r.Password) == "p1"
}

func (allowPolicy) Allow(clientID, username, topic string, write bool) bool {
	return topic == "t/ok"
}

func TestBroker_PolicyDecidesConnectAndTopics(t *testing.T) {
	b := start(t, broker.Config{Policy: allowPolicy{}})

	_, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u1", Password: "wrong"})
	require.Error(t, err)

	c, ack, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u1", Password: "p1"})
	require.NoError(t, err)
	assert.Equal(t, byte(0), ack.ReasonCode)

	sa, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/ok", QoS: 1}, {Topic: "t/#", QoS: 1}}})
	require.Error(t, err, "one filter is refused")
	require.NotNil(t, sa)
	require.Len(t, sa.Reasons, 2)
	assert.Equal(t, byte(1), sa.Reasons[0], "allowed filter granted at QoS 1")
	assert.GreaterOrEqual(t, sa.Reasons[1], byte(0x80), "wildcard refused")

	require.NoError(t, b.Server().Publish("t/ok", []byte("hello"), false, 1))
	select {
	case pk := <-c.Received:
		assert.Equal(t, "t/ok", pk.Topic)
		assert.Equal(t, "hello", string(pk.Payload))
	case <-time.After(5 * time.Second):
		t.Fatal("allowed message not delivered")
	}
}

func TestBroker_ServesOnlyItsPath(t *testing.T) {
	b := start(t, broker.Config{Policy: allowPolicy{}})
	wrong := strings.TrimSuffix(b.URL(), "/mqtt") + "/other"
	_, _, err := mqtttest.Dial(t, wrong, mqtttest.Options{ClientID: "c1", Username: "u1", Password: "p1"})
	require.ErrorIs(t, err, websocket.ErrBadHandshake)
}

func TestBroker_RefusesBrowsersFromOtherOrigins(t *testing.T) {
	b := start(t, broker.Config{Policy: allowPolicy{}, AllowedOrigins: []string{"https://ops.example"}})
	opts := mqtttest.Options{ClientID: "c1", Username: "u1", Password: "p1"}

	opts.Header = http.Header{"Origin": {"https://evil.example"}}
	_, _, err := mqtttest.Dial(t, b.URL(), opts)
	require.ErrorIs(t, err, websocket.ErrBadHandshake)

	opts.Header = http.Header{"Origin": {"https://ops.example"}}
	_, _, err = mqtttest.Dial(t, b.URL(), opts)
	require.NoError(t, err)
}

func TestBroker_RefusesOversizedPackets(t *testing.T) {
	b := start(t, broker.Config{Policy: allowPolicy{}, MaxPacketSize: 1024})
	c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u1", Password: "p1"})
	require.NoError(t, err)
	_, err = c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/ok", QoS: 1}}})
	require.NoError(t, err)
	go func() {
		_, _ = c.Publish(t.Context(), &paho.Publish{Topic: "t/ok", QoS: 1, Payload: make([]byte, 4096)})
	}()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a client sending a packet over the maximum is not disconnected")
	}
	select {
	case pk := <-c.Received:
		t.Fatalf("oversized message relayed: %d bytes", len(pk.Payload))
	default:
	}
}

// An idle client must cost the broker one small goroutine waiting for its
// input: no goroutine under mochi's attachClient (whose frames are deep)
// and no writer while nothing is queued for it.
func TestBroker_IdleClientsHoldOnlyAWaitingGoroutine(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	const n = 20
	for i := range n {
		c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: fmt.Sprintf("idle-%d", i), Username: "u", Password: "p"})
		require.NoError(t, err)
		_, err = c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/idle", QoS: 1}}})
		require.NoError(t, err)
	}
	// One message to every client, so each has had a writer once.
	require.NoError(t, b.Server().Publish("t/idle", []byte("x"), false, 0))

	// Frames of running goroutines, not "created by" lines.
	count := func(fn string) int {
		buf := make([]byte, 8<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		return strings.Count(stacks, "\ngithub.com/mochi-mqtt/server/v2."+fn+"(")
	}
	require.Eventually(t, func() bool {
		return count("(*Server).readWhenReady") == n &&
			count("(*Client).drainOutbound") == 0 &&
			count("(*Server).attachClient") == 0 &&
			count("(*Client).WriteLoop") == 0
	}, 5*time.Second, 10*time.Millisecond, "idle clients: want %d waiting goroutines and nothing else", n)
}

// The writer that exists only while messages are queued must keep their
// order.
func TestBroker_DeliversInOrderThroughOnDemandWriter(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "order", Username: "u", Password: "p"})
	require.NoError(t, err)
	_, err = c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/order", QoS: 0}}})
	require.NoError(t, err)
	next := 0
	for burst := range 20 {
		// Bursts smaller than the client's pending-write queue, so none is
		// dropped, with the writer starting and stopping between them.
		for i := range 32 {
			require.NoError(t, b.Server().Publish("t/order", []byte(strconv.Itoa(burst*32+i)), false, 0))
		}
		for range 32 {
			select {
			case pk := <-c.Received:
				require.Equal(t, strconv.Itoa(next), string(pk.Payload))
				next++
			case <-time.After(5 * time.Second):
				t.Fatalf("message %d not delivered", next)
			}
		}
	}
}

// anyPolicy admits every client and topic.
type anyPolicy struct{}

func (anyPolicy) Authenticate(broker.ConnectRequest) bool { return true }
func (anyPolicy) Allow(_, _, _ string, _ bool) bool       { return true }

// Retained status is published when state changes, which may be weeks
// apart; the broker must not expire it on its own.
func TestBroker_RetainedMessagesDoNotExpire(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	require.NoError(t, b.Publish("t/status", []byte("{}"), true, 0, nil))
	pk, ok := b.Server().Topics.Retained.Get("t/status")
	require.True(t, ok)
	assert.Zero(t, pk.Expiry, "retained message given an expiry")
}

// A watcher subscribing to a subtree gets every retained message in it,
// however many there are: they are not dropped for want of room in its
// pending-write queue.
func TestBroker_SubscriberGetsEveryRetainedMessage(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	const n = 1000
	for i := range n {
		require.NoError(t, b.Publish(fmt.Sprintf("t/r/%d", i), []byte(strconv.Itoa(i)), true, 0, nil))
	}
	c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "watcher", Username: "u", Password: "p"})
	require.NoError(t, err)
	seen := make(map[string]bool)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(seen) < n {
			select {
			case pk := <-c.Received:
				seen[pk.Topic] = true
			case <-time.After(5 * time.Second):
				return
			}
		}
	}()
	_, err = c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/r/#", QoS: 0}}})
	require.NoError(t, err)
	<-done
	assert.Len(t, seen, n, "retained messages delivered on subscribe")
}

// awaitClosed waits for the server to close c, and returns how long that
// took from since; it fails the test if c is still open at limit.
func awaitClosed(t *testing.T, c net.Conn, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	_ = c.SetReadDeadline(since.Add(limit))
	var b [64]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			require.NotErrorIs(t, err, os.ErrDeadlineExceeded, "connection still open after %v", limit)
			return time.Since(since)
		}
	}
}

// A connection has ConnectTimeout from accept to send its CONNECT, and
// then no longer: the keep-alive the CONNECT asks for rules from there.
func TestBroker_ClosesConnectionsWithoutConnectInTime(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}, ConnectTimeout: 500 * time.Millisecond})
	c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u", Password: "p"})
	require.NoError(t, err)
	_, err = c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/alive", QoS: 1}}})
	require.NoError(t, err)

	// A WebSocket that sends nothing, and one that sends part of a CONNECT.
	t0 := time.Now()
	silent, err := mqtttest.DialRaw(t.Context(), b.URL(), "")
	require.NoError(t, err)
	t1 := time.Now()
	partial, err := mqtttest.DialRaw(t.Context(), b.URL(), "")
	require.NoError(t, err)
	_, err = partial.Write(mqtttest.ClientFrame(append(mqtttest.FixedHeader(0x10, 100), 0, 4, 'M', 'Q')))
	require.NoError(t, err)
	// A TCP connection that does not even send its HTTP request.
	d := net.Dialer{}
	t2 := time.Now()
	bare, err := d.DialContext(t.Context(), "tcp", b.WSAddr().String())
	require.NoError(t, err)
	for name, w := range map[string]struct {
		c     net.Conn
		since time.Time
	}{"silent": {silent, t0}, "partial CONNECT": {partial, t1}, "no HTTP request": {bare, t2}} {
		took := awaitClosed(t, w.c, w.since, 5*time.Second)
		assert.GreaterOrEqual(t, took, 400*time.Millisecond, "%s: closed before its time", name)
		assert.Less(t, took, 2*time.Second, "%s: closed late", name)
	}

	// The client that did connect, before all three, is still served.
	require.NoError(t, b.Server().Publish("t/alive", []byte("yes"), false, 1))
	select {
	case pk := <-c.Received:
		assert.Equal(t, "yes", string(pk.Payload))
	case <-time.After(5 * time.Second):
		t.Fatal("a connected client lost its connection at the connect timeout")
	}
}

// A CONNECT over MaxConnectSize is refused on its fixed header; the
// largest a real client sends (a 256-byte password, a 128-byte client
// id) is well within the default.
func TestBroker_BoundsConnectSize(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}, MaxPacketSize: 1 << 20, ConnectTimeout: 30 * time.Second})
	raw, err := mqtttest.DialRaw(t.Context(), b.URL(), "")
	require.NoError(t, err)
	t0 := time.Now()
	_, err = raw.Write(mqtttest.ClientFrame(mqtttest.FixedHeader(0x10, broker.DefaultMaxConnectSize)))
	require.NoError(t, err)
	awaitClosed(t, raw, t0, 5*time.Second)

	_, ack, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{
		ClientID: "monitor-" + strings.Repeat("c", 120), Username: "monitor", Password: strings.Repeat("p", 256),
	})
	require.NoError(t, err)
	assert.Equal(t, byte(0), ack.ReasonCode)
}

// One source may hold at most MaxPendingPerSource connections that have
// not been answered their CONNECT: one more is closed as it is accepted,
// while another source still connects, clients that have authenticated
// hold no slot, and a pending connection that closes gives its slot back.
func TestBroker_BoundsPendingConnectionsPerSource(t *testing.T) {
	const bound = 3
	b := start(t, broker.Config{Policy: anyPolicy{}, MaxPendingPerSource: bound, ConnectTimeout: 30 * time.Second})
	ctx := t.Context()
	var held []net.Conn
	for i := range bound {
		c, err := mqtttest.DialRaw(ctx, b.URL(), "127.0.0.2")
		require.NoError(t, err, "pending connection %d", i)
		held = append(held, c)
		t.Cleanup(func() { _ = c.Close() })
	}
	_, err := mqtttest.DialRaw(ctx, b.URL(), "127.0.0.2")
	require.ErrorContains(t, err, "handshake", "connection %d pending from one source", bound+1)

	// Another source is not held back, and neither are clients once
	// authenticated: twice the bound connect one after another from it.
	other, err := mqtttest.DialRaw(ctx, b.URL(), "127.0.0.3")
	require.NoError(t, err, "a pending connection from another source")
	require.NoError(t, other.Close())
	for i := range 2 * bound {
		_, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: fmt.Sprintf("c%d", i), Username: "u", Password: "p"})
		require.NoError(t, err, "authenticated client %d", i)
	}

	// Once one of them closes, the source may open another.
	require.NoError(t, held[0].Close())
	require.Eventually(t, func() bool {
		c, err := mqtttest.DialRaw(ctx, b.URL(), "127.0.0.2")
		if err != nil {
			return false
		}
		t.Cleanup(func() { _ = c.Close() })
		return true
	}, 5*time.Second, 20*time.Millisecond, "the slot of a closed pending connection is given back")
}

// Closing the broker does not wait for connections yet to send their
// CONNECT: it closes them.
func TestBroker_CloseDoesNotWaitForPendingConnections(t *testing.T) {
	b, err := broker.New(broker.Config{WSAddr: "127.0.0.1:0", Policy: anyPolicy{}, ConnectTimeout: 30 * time.Second})
	require.NoError(t, err)
	require.NoError(t, b.Start())
	c, err := mqtttest.DialRaw(t.Context(), b.URL(), "")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	t0 := time.Now()
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a connection yet to send its CONNECT")
	}
	awaitClosed(t, c, t0, 5*time.Second)
}

// Only the control plane retains: a client's retained publish is
// delivered but not stored, and its empty retained publish does not
// delete what the control plane retained.
func TestBroker_ClientsCannotRetain(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	require.NoError(t, b.Publish("t/status", []byte("from the control plane"), true, 0, nil))
	c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u", Password: "p"})
	require.NoError(t, err)
	_, err = c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/own", QoS: 1}}})
	require.NoError(t, err)

	_, err = c.Publish(t.Context(), &paho.Publish{Topic: "t/own", QoS: 1, Retain: true, Payload: []byte("from a client")})
	require.NoError(t, err)
	select {
	case pk := <-c.Received:
		assert.Equal(t, "from a client", string(pk.Payload), "delivered")
	case <-time.After(5 * time.Second):
		t.Fatal("a client's retained publish is not delivered")
	}
	_, err = c.Publish(t.Context(), &paho.Publish{Topic: "t/status", QoS: 1, Retain: true})
	require.NoError(t, err)

	// Both publishes were acknowledged, so the broker has handled them.
	_, ok := b.Server().Topics.Retained.Get("t/own")
	assert.False(t, ok, "a client's publish retained")
	pk, ok := b.Server().Topics.Retained.Get("t/status")
	require.True(t, ok, "a client's empty retained publish deleted the control plane's")
	assert.Equal(t, "from the control plane", string(pk.Payload))
}

// A node that must not serve sends clients elsewhere: those connected are
// told to use another server, and new ones are refused with that reason,
// whoever they are.
func TestBroker_RedirectSendsClientsToAnotherServer(t *testing.T) {
	b := start(t, broker.Config{Policy: allowPolicy{}})
	c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u1", Password: "p1"})
	require.NoError(t, err)

	b.Redirect(true)
	assert.True(t, b.Redirecting())
	assert.Equal(t, 1, b.DisconnectAll(packets.ErrUseAnotherServer))
	select {
	case d := <-c.Disconnected:
		assert.Equal(t, byte(0x9C), d.ReasonCode)
	case <-time.After(5 * time.Second):
		t.Fatal("no DISCONNECT with a reason")
	}
	for _, o := range []mqtttest.Options{{ClientID: "c1", Username: "u1", Password: "p1"}, {ClientID: "anon"}} {
		_, ack, err := mqtttest.Dial(t, b.URL(), o)
		require.Error(t, err)
		require.NotNil(t, ack)
		assert.Equal(t, byte(0x9C), ack.ReasonCode, "use another server")
	}

	b.Redirect(false)
	_, ack, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u1", Password: "p1"})
	require.NoError(t, err)
	assert.Equal(t, byte(0), ack.ReasonCode)
}

// A paced disconnect waits for its caller's ready before each batch
// after the first, told how many clients are gone so far: a draining
// node sends no more agents than the other nodes have taken in.
func TestBroker_DisconnectPacedWaitsForReady(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	var clients []*mqtttest.Client
	for _, id := range []string{"c1", "c2", "c3"} {
		c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: id, Username: "u", Password: "p"})
		require.NoError(t, err)
		clients = append(clients, c)
	}
	asked := make(chan int)
	release := make(chan struct{})
	ready := func(_ context.Context, sent int) {
		asked <- sent
		<-release
	}
	done := make(chan int, 1)
	go func() { done <- b.DisconnectPaced(t.Context(), packets.ErrUseAnotherServer, 20, ready) }() // batches of one

	total := 0
	gone := func() int {
		for _, c := range clients {
			select {
			case <-c.Disconnected:
				total++
			default:
			}
		}
		return total
	}
	for want := 1; want <= 2; want++ {
		require.Equal(t, want, <-asked, "ready is told how many are gone")
		// ready has not returned: no client more can be sent away.
		require.Eventually(t, func() bool { return gone() == want }, 5*time.Second, 10*time.Millisecond)
		release <- struct{}{}
	}
	assert.Equal(t, 3, <-done)
	assert.Eventually(t, func() bool { return gone() == 3 }, 5*time.Second, 10*time.Millisecond, "the last one")
}

// A node holds no more clients than its bound: one more is told the
// server is busy, so an agent tries another node, and a place freed is
// taken again.
func TestBroker_MaxClientsRefusesOneMoreAsBusy(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}, MaxClients: 2})
	var held []*mqtttest.Client
	for _, id := range []string{"c1", "c2"} {
		c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: id, Username: "u", Password: "p"})
		require.NoError(t, err)
		held = append(held, c)
	}
	_, ack, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c3", Username: "u", Password: "p"})
	require.Error(t, err)
	require.NotNil(t, ack)
	assert.Equal(t, byte(0x89), ack.ReasonCode, "server busy")

	require.NoError(t, held[0].Disconnect(&paho.Disconnect{}))
	require.Eventually(t, func() bool {
		c, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c3", Username: "u", Password: "p"})
		if err != nil {
			return false
		}
		_ = c.Disconnect(&paho.Disconnect{})
		return true
	}, 5*time.Second, 20*time.Millisecond, "a freed place is taken again")
}

// A full broker reads up to BusyAnswers connections at once to answer
// them busy; one more is closed as it is accepted, so that a storm of
// agents at a full node cannot take the descriptors the rest of the
// server needs. A pending connection that closes gives its place back.
func TestBroker_FullBrokerClosesConnectionsPastItsBusyAnswers(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}, MaxClients: 1, MaxPendingPerSource: -1, ConnectTimeout: 30 * time.Second})
	ctx := t.Context()
	_, _, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c1", Username: "u", Password: "p"})
	require.NoError(t, err)
	var pending []net.Conn
	for i := range broker.BusyAnswers {
		c, err := mqtttest.DialRaw(ctx, b.URL(), "")
		require.NoError(t, err, "pending connection %d at a full broker", i)
		pending = append(pending, c)
		t.Cleanup(func() { _ = c.Close() })
	}
	_, err = mqtttest.DialRaw(ctx, b.URL(), "")
	require.ErrorContains(t, err, "handshake", "one more than BusyAnswers pending at a full broker")

	// A client that connects while fewer are pending is answered busy.
	require.NoError(t, pending[0].Close())
	require.Eventually(t, func() bool {
		c, err := mqtttest.DialRaw(ctx, b.URL(), "")
		if err != nil {
			return false
		}
		t.Cleanup(func() { _ = c.Close() })
		return true
	}, 5*time.Second, 20*time.Millisecond, "the place of a closed pending connection is given back")
	require.NoError(t, pending[1].Close())
	require.Eventually(t, func() bool {
		_, ack, err := mqtttest.Dial(t, b.URL(), mqtttest.Options{ClientID: "c2", Username: "u", Password: "p"})
		return err != nil && ack != nil && ack.ReasonCode == 0x89
	}, 5*time.Second, 20*time.Millisecond, "answered server busy")
}

// By default the bound leaves the server a reserve of its descriptor
// limit for its database, its cluster and its API.
func TestDefaultMaxClients_LeavesADescriptorReserve(t *testing.T) {
	var rl syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl))
	if rl.Cur > 1<<30 {
		t.Skip("no descriptor limit to leave a reserve of")
	}
	assert.Equal(t, int(rl.Cur)-broker.DescriptorReserve, broker.DefaultMaxClients())
}

// With no TCP keep-alive on broker sockets, the MQTT keep-alive is the
// only way a silent client is found: one asking for none, or for longer
// than the broker grants, is given the broker's longest.
func TestBroker_BoundsEveryClientsKeepAlive(t *testing.T) {
	b := start(t, broker.Config{Policy: anyPolicy{}})
	for _, tc := range []struct {
		name string
		o    mqtttest.Options
		want uint16 // 0: the client's own, no Server Keep Alive sent
	}{
		{"none", mqtttest.Options{NoKeepAlive: true}, broker.MaxKeepAlive},
		{"too long", mqtttest.Options{KeepAlive: broker.MaxKeepAlive + 1}, broker.MaxKeepAlive},
		{"within", mqtttest.Options{KeepAlive: 30}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.ClientID, tc.o.Username, tc.o.Password = "ka-"+strings.ReplaceAll(tc.name, " ", "-"), "u", "p"
			_, ack, err := mqtttest.Dial(t, b.URL(), tc.o)
			require.NoError(t, err)
			if tc.want == 0 {
				assert.Nil(t, ack.Properties.ServerKeepAlive)
				return
			}
			require.NotNil(t, ack.Properties.ServerKeepAlive)
			assert.Equal(t, tc.want, *ack.Properties.ServerKeepAlive)
		})
	}
}
