package e2e

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strings"
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

// listeningSockets returns the TCP/UDP sockets process pid listens on,
// from /proc: its socket inodes matched against the kernel's tables.
func listeningSockets(t *testing.T, pid int) []string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			// TCP state 0A is LISTEN; any bound UDP socket could receive.
			if (strings.HasPrefix(table, "tcp") && f[3] == "0A") || strings.HasPrefix(table, "udp") {
				out = append(out, table+" "+f[1])
			}
		}
	}
	return out
}

// jsonB64 decodes the base64 form encoding/json gives []byte fields.
type jsonB64 struct{}

func (jsonB64) decode(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
