package auditstream

import (
	"net"

	"golang.org/x/sys/unix"
)

// sendQueue returns the bytes written to c that its peer has not yet
// acknowledged (SIOCOUTQ).
func sendQueue(c *net.TCPConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var qerr error
	if err := raw.Control(func(fd uintptr) { n, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
		return 0, err
	}
	return n, qerr
}
