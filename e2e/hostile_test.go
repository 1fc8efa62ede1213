package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// liveHeap is the server's (this process's) live heap after a collection.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A client that opens a WebSocket and sends only the start of a CONNECT
// must neither pin the packet size it declares nor stay connected: 200 of
// them, from four addresses other than the agents', each sending one frame
// holding a CONNECT fixed header (half declaring 8 MiB, half just under
// the CONNECT cap) and then nothing, grow the heap by less than 20 MiB
// and are all closed by the server within 11 s of dialling. Agents
// connecting meanwhile are served as usual and stay connected after.
func TestBroker_HalfOpenConnectsHoldNeitherMemoryNorConnections(t *testing.T) {
	p := startInProcess(t)
	const agents = 4
	var enrolled []struct {
		id     topics.AgentID
		secret string
	}
	for i := range agents {
		e := p.enrollDirect(t, fmt.Sprintf("agent-%d", i))
		id, err := topics.ParseAgentID(e.AgentID)
		require.NoError(t, err)
		enrolled = append(enrolled, struct {
			id     topics.AgentID
			secret string
		}{id, e.Secret})
	}
	base := liveHeap()

	type closed struct {
		declared int
		after    time.Duration
		err      error
	}
	const hostile = 200
	declared := func(i int) int {
		if i%2 == 0 {
			return 8 << 20 // the most the server's packet limit admits
		}
		return broker.DefaultMaxConnectSize - 64 // under the CONNECT cap: only the deadline ends it
	}
	done := make(chan closed, hostile)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := range hostile {
		start := time.Now()
		src := fmt.Sprintf("127.0.0.%d", 2+i%4)
		c, err := mqtttest.DialRaw(ctx, p.srv.MQTTURL(), src)
		require.NoError(t, err, "hostile connection %d from %s", i, src)
		t.Cleanup(func() { _ = c.Close() })
		_, err = c.Write(mqtttest.ClientFrame(mqtttest.FixedHeader(0x10, declared(i))))
		require.NoError(t, err)
		go func() {
			// The client never closes: a read ends when the server does,
			// or at this deadline, well past the one the server must keep.
			_ = c.SetReadDeadline(start.Add(15 * time.Second))
			var b [64]byte
			for {
				if _, err := c.Read(b[:]); err != nil {
					done <- closed{declared: declared(i), after: time.Since(start), err: err}
					return
				}
			}
		}()
	}

	// Agents connect and publish while all that is going on.
	var clients []*mqtttest.Client
	for _, a := range enrolled {
		t0 := time.Now()
		c, _, err := mqtttest.Dial(t, p.srv.MQTTURL(), mqtttest.Options{ClientID: a.id.String(), Username: a.id.String(), Password: a.secret})
		require.NoError(t, err)
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = c.Publish(pctx, &paho.Publish{Topic: a.id.Topic(topics.Heartbeat), QoS: 1, Payload: []byte(`{}`)})
		pcancel()
		require.NoError(t, err)
		assert.Less(t, time.Since(t0), 5*time.Second, "an agent's connect and first publish")
		clients = append(clients, c)
	}
	held := liveHeap() - base
	t.Logf("heap growth with %d half-open connections: %.1f MiB", hostile, float64(held)/(1<<20))
	assert.Less(t, held, int64(20<<20), "heap growth while half-open connections are held")

	var slowest, slowestBig time.Duration
	notClosed := 0
	for range hostile {
		c := <-done
		if errors.Is(c.err, os.ErrDeadlineExceeded) {
			notClosed++
			continue
		}
		var ne net.Error
		if errors.As(c.err, &ne) && ne.Timeout() {
			notClosed++
			continue
		}
		slowest = max(slowest, c.after)
		if c.declared > broker.DefaultMaxConnectSize {
			slowestBig = max(slowestBig, c.after)
		}
	}
	t.Logf("half-open connections closed by the server: %d of %d, the last after %v; over the CONNECT cap, the last after %v",
		hostile-notClosed, hostile, slowest.Round(time.Millisecond), slowestBig.Round(time.Millisecond))
	require.Zero(t, notClosed, "half-open connections still open 15 s after dialling")
	assert.Less(t, slowest, 11*time.Second, "half-open connections closed within 11 s")
	assert.Less(t, slowestBig, 2*time.Second, "a CONNECT over the cap is refused on its fixed header")
	t.Logf("heap growth after they closed: %.1f MiB", float64(liveHeap()-base)/(1<<20))

	// The agents, connected for longer than the CONNECT deadline, are
	// still served.
	for i, c := range clients {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Publish(pctx, &paho.Publish{Topic: enrolled[i].id.Topic(topics.Heartbeat), QoS: 1, Payload: []byte(`{}`)})
		pcancel()
		require.NoError(t, err, "agent %d after the half-open connections closed", i)
	}
}

// The server's settings reach the broker: mqtt-max-pending-per-source
// bounds one source's pending connections, mqtt-connect-timeout how long
// they may stay.
func TestServer_ConnectSettingsReachTheBroker(t *testing.T) {
	env := testenv.NewEnv(t)
	srv := testenv.StartInProcess(t, env, map[string]any{"mqtt-max-pending-per-source": 2, "mqtt-connect-timeout": "1s"})
	ctx := t.Context()
	var held []net.Conn
	t0 := time.Now()
	for range 2 {
		c, err := mqtttest.DialRaw(ctx, srv.MQTTURL(), "127.0.0.2")
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		held = append(held, c)
	}
	_, err := mqtttest.DialRaw(ctx, srv.MQTTURL(), "127.0.0.2")
	require.ErrorContains(t, err, "handshake", "a third pending connection from one source")
	for _, c := range held {
		_ = c.SetReadDeadline(t0.Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		require.Error(t, err)
		require.NotErrorIs(t, err, os.ErrDeadlineExceeded, "a pending connection outlived mqtt-connect-timeout")
	}
	assert.Less(t, time.Since(t0), 3*time.Second, "pending connections closed at mqtt-connect-timeout")
}
