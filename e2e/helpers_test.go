package e2e

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// freePort returns a loopback address whose port was free a moment ago,
// for a server that must come back on the same address after a restart.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}
