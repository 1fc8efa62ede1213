package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

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
