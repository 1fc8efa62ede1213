package auditstream_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/argus-remote/argus/controlplane/auditstream"
)

// syslogReceiver is a small RFC 5424 receiver over TCP with
// octet-counting framing: it keeps every message it reads, in order, with
// the connection it came on.
type syslogReceiver struct {
	t    *testing.T
	addr string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
	msgs  []received
	conn  int // connections accepted so far
	errs  []error
	// hold, while open, keeps every connection from being read.
	hold chan struct{}
	tls  *tls.Config
}

type received struct {
	conn   int
	raw    string
	params map[string]string
	end    int64 // bytes read on its connection up to its end
}

// startReceiver listens on addr ("127.0.0.1:0" for any port).
func startReceiver(t *testing.T, addr string) *syslogReceiver {
	t.Helper()
	r := &syslogReceiver{t: t}
	r.listen(addr)
	t.Cleanup(r.stop)
	return r
}

// startTLSReceiver is startReceiver behind TLS with cert.
func startTLSReceiver(t *testing.T, cert tls.Certificate) *syslogReceiver {
	t.Helper()
	r := &syslogReceiver{t: t, tls: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	r.listen("127.0.0.1:0")
	t.Cleanup(r.stop)
	return r
}

func (r *syslogReceiver) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.tls != nil {
		ln = tls.NewListener(ln, r.tls)
	}
	r.mu.Lock()
	r.ln, r.addr = ln, ln.Addr().String()
	r.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conn++
			n := r.conn
			r.conns = append(r.conns, c)
			r.mu.Unlock()
			go r.read(c, n)
		}
	}()
}

// stop closes the listener and every connection, unread bytes and all,
// as a receiver that dies does.
func (r *syslogReceiver) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// restart listens again on the same address.
func (r *syslogReceiver) restart() { r.listen(r.addr) }

// pause keeps connections from being read until resume.
func (r *syslogReceiver) pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold = make(chan struct{})
}

func (r *syslogReceiver) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.hold)
	r.hold = nil
}

// unread is the bytes waiting in the kernel's receive queues of the
// receiver's connections: acknowledged to the sender, never read.
func (r *syslogReceiver) unread() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, c := range r.conns {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			continue
		}
		raw, err := tc.SyscallConn()
		if err != nil {
			continue
		}
		_ = raw.Control(func(fd uintptr) {
			q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			if err == nil {
				n += int64(q)
			}
		})
	}
	return n
}

func (r *syslogReceiver) read(c net.Conn, n int) {
	r.mu.Lock()
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		<-hold
	}
	counted := &countingReader{r: c}
	br := bufio.NewReaderSize(counted, 64<<10)
	for {
		msg, err := readFrame(br)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				r.mu.Lock()
				r.errs = append(r.errs, err)
				r.mu.Unlock()
			}
			return
		}
		params, err := parseSD(msg)
		r.mu.Lock()
		if err != nil {
			r.errs = append(r.errs, fmt.Errorf("%w in %q", err, msg))
		} else {
			r.msgs = append(r.msgs, received{conn: n, raw: msg, params: params, end: counted.n - int64(br.Buffered())})
		}
		r.mu.Unlock()
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// readFrame reads one octet-counted frame: MSG-LEN SP SYSLOG-MSG.
func readFrame(br *bufio.Reader) (string, error) {
	lenText, err := br.ReadString(' ')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(lenText, " "))
	if err != nil || n <= 0 || lenText[0] == '0' {
		return "", fmt.Errorf("bad frame length %q", lenText)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// parseSD returns the SD-PARAMs of msg's element, unescaped, checking the
// header and that nothing follows the element.
func parseSD(msg string) (map[string]string, error) {
	fields := strings.SplitN(msg, " ", 7)
	if len(fields) < 7 || !strings.HasPrefix(fields[0], "<") || !strings.HasSuffix(fields[0], ">1") || fields[3] != auditstream.AppName || fields[5] != "audit" {
		return nil, errors.New("bad header")
	}
	sd := fields[6]
	if !strings.HasPrefix(sd, "["+auditstream.SDID) {
		return nil, errors.New("no " + auditstream.SDID + " element")
	}
	rest := sd[len(auditstream.SDID)+1:]
	params := map[string]string{}
	for {
		if rest == "]" {
			return params, nil
		}
		if !strings.HasPrefix(rest, " ") {
			return nil, fmt.Errorf("expected SP or ] at %q", rest)
		}
		rest = rest[1:]
		name, after, ok := strings.Cut(rest, `="`)
		if !ok || name == "" || strings.ContainsAny(name, ` ]"=`) || len(name) > 32 {
			return nil, fmt.Errorf("bad PARAM-NAME at %q", rest)
		}
		var v strings.Builder
		i := 0
		for ; i < len(after); i++ {
			c := after[i]
			if c == '\\' && i+1 < len(after) && strings.ContainsRune(`"\]`, rune(after[i+1])) {
				i++
				v.WriteByte(after[i])
				continue
			}
			if c == '"' {
				break
			}
			if c == ']' {
				return nil, fmt.Errorf("unescaped ] in %s", name)
			}
			v.WriteByte(c)
		}
		if i == len(after) {
			return nil, fmt.Errorf("unterminated %s", name)
		}
		if _, dup := params[name]; dup {
			return nil, fmt.Errorf("%s twice", name)
		}
		params[name] = v.String()
		rest = after[i+1:]
	}
}

func (r *syslogReceiver) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

func (r *syslogReceiver) problems() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// seqs returns the seq of every message received, in order of arrival.
func (r *syslogReceiver) seqs() []int64 {
	var out []int64
	for _, m := range r.all() {
		n, _ := strconv.ParseInt(m.params["seq"], 10, 64)
		out = append(out, n)
	}
	return out
}

// has reports whether every seq in 1..n has arrived.
func (r *syslogReceiver) has(n int64) func() bool {
	return func() bool {
		seen := map[int64]bool{}
		for _, s := range r.seqs() {
			seen[s] = true
		}
		for i := int64(1); i <= n; i++ {
			if !seen[i] {
				return false
			}
		}
		return true
	}
}

// inOrderNoGaps checks what a receiver that drops duplicates by seq keeps:
// each message is either one seen before or the next one.
func inOrderNoGaps(seqs []int64) error {
	var last int64
	for i, s := range seqs {
		if s > last+1 {
			return fmt.Errorf("message %d: seq %d after %d (a gap)", i, s, last)
		}
		last = max(last, s)
	}
	return nil
}
