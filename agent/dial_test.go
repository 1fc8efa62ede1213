package agent

import (
	"net"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// The agent's broker link is checked by the MQTT keep-alive alone: TCP
// keep-alive probes on a large fleet's idle sockets fire in batches that
// a loopback or a busy host drops, ending healthy links with ETIMEDOUT.
func TestNetDialer_BrokerConnectionsHaveNoTCPKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		if c, err := ln.Accept(); err == nil {
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	a := &Agent{cfg: Config{LocalAddr: "127.0.0.1"}}
	c, err := a.netDialer().DialContext(t.Context(), "tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	raw, err := c.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var on int
	var serr error
	require.NoError(t, raw.Control(func(fd uintptr) {
		on, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	}))
	require.NoError(t, serr)
	require.Zero(t, on, "agent's broker connection has TCP keep-alive on")
}
