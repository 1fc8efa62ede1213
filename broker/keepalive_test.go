package broker

import (
	"log/slog"
	"net"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// socketKeepAlive reports whether SO_KEEPALIVE is set on c's socket.
func socketKeepAlive(t *testing.T, c net.Conn) bool {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	var on int
	var serr error
	require.NoError(t, raw.Control(func(fd uintptr) {
		on, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	}))
	require.NoError(t, serr)
	return on != 0
}

// The MQTT keep-alive is how the broker finds a dead client. TCP
// keep-alive probes on every idle socket were a second check: with
// 100,000 loopback sockets, probes whose timers fire in the same tick
// overflow the loopback queue, are dropped, and end healthy connections
// with ETIMEDOUT.
func TestWSListener_AcceptedConnectionsHaveNoTCPKeepAlive(t *testing.T) {
	l := newWSListener("ws", Config{WSAddr: "127.0.0.1:0", WSPath: "/mqtt", MaxPendingPerSource: 4})
	require.NoError(t, l.Init(slog.New(slog.DiscardHandler)))
	t.Cleanup(func() { _ = l.ln.Close() })

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", l.addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	c, ok := <-accepted
	require.True(t, ok, "accept failed")
	t.Cleanup(func() { _ = c.Close() })

	require.False(t, socketKeepAlive(t, c.(*pendingConn).Conn), "accepted broker connection has TCP keep-alive on")
}
