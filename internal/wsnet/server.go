package wsnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

var (
	// ErrProtocol is returned, wrapped with detail, when the client breaks
	// RFC 6455 framing.
	ErrProtocol = errors.New("wsnet: websocket protocol error")
	// ErrFrameTooLarge is returned when a data frame declares a payload
	// longer than the ServerConn's maxFrame.
	ErrFrameTooLarge = errors.New("wsnet: websocket frame too large")

	errCloseSent = fmt.Errorf("wsnet: close frame sent: %w", net.ErrClosed)
)

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA

	closeProtocolError   = 1002
	closeUnsupportedData = 1003
	closeTooBig          = 1009

	bufSize = 4 << 10
)

// bufPool holds the read buffers, which a ServerConn keeps only while it
// has unconsumed input, and the buffers small writes are framed in.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// ServerConn is the server end of an MQTT-over-WebSocket connection (MQTT
// 5.0 §6): it reads the payloads of the client's binary messages back to
// back as one byte stream, and sends each Write as one binary message.
//
// It does the RFC 6455 framing itself so that an idle connection holds no
// read buffer: see WaitRead. Read, WaitRead and Buffered must be called
// from one goroutine at a time; Write and Close may be called from any.
type ServerConn struct {
	conn     net.Conn
	raw      syscall.RawConn    // nil if conn has no file descriptor
	peekFn   func(uintptr) bool // c.peekReady, bound once so WaitRead does not allocate
	maxFrame int64

	// Reader state.
	bp      *[]byte // pooled read buffer; nil when nothing is buffered
	r, w    int     // (*bp)[r:w] is received, unconsumed input
	remain  int64   // payload bytes of the current data frame not yet read
	key     [4]byte
	kpos    int   // offset into key of the next payload byte
	inMsg   bool  // a fragmented binary message is open
	err     error // sticky: protocol error, text message or io.EOF after a close frame
	pending error // held back for the next read: one that came with data, or WaitRead's EOF
	peek    [1]byte

	wmu       sync.Mutex
	closeSent bool
}

var _ net.Conn = (*ServerConn)(nil)

// NewServerConn wraps c, an upgraded connection with nothing buffered.
// maxFrame bounds a single data frame's payload length (frames declaring
// more are a protocol error); 0 or less means no bound. Control frames
// are bounded by RFC 6455's 125 bytes.
//
// c must not buffer input of its own if it implements syscall.Conn, as
// *net.TCPConn does: WaitRead then peeks at the socket directly.
func NewServerConn(c net.Conn, maxFrame int64) *ServerConn {
	sc := &ServerConn{conn: c, maxFrame: maxFrame}
	if s, ok := c.(syscall.Conn); ok {
		if raw, err := s.SyscallConn(); err == nil {
			sc.raw = raw
			sc.peekFn = sc.peekReady
		}
	}
	return sc
}

// WaitRead blocks until input is available, the client has closed its
// side, or an error occurs, without holding a buffer while it waits. It
// returns nil at once if Read can make progress on already-received
// input. It returns nil on readiness, including EOF or a socket error
// (which the following Read reports), and the error on read deadline
// expiry (os.ErrDeadlineExceeded) or a closed connection (net.ErrClosed).
//
// If the underlying conn is not a syscall.Conn (for example a *tls.Conn),
// WaitRead falls back to one blocking read into a pooled buffer, which it
// holds while it waits; the bytes read are kept for Read. It then returns
// any error of that read other than io.EOF.
func (c *ServerConn) WaitRead() error {
	if c.ready() {
		return nil
	}
	if c.raw != nil {
		// The runtime poller parks the goroutine until the socket is
		// readable, honouring the read deadline, with a shallow stack.
		return c.raw.Read(c.peekFn)
	}
	if err := c.readMore(); err != io.EOF {
		return err
	}
	c.pending = io.EOF // for the next Read
	return nil
}

// peekReady reports whether fd has input, EOF or an error, leaving
// whatever it is in the socket for Read. (Unix only, as the broker is.)
func (c *ServerConn) peekReady(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
}

// ready reports whether Read can make progress without waiting on conn.
func (c *ServerConn) ready() bool {
	if c.err != nil || c.pending != nil {
		return true
	}
	if c.r == c.w {
		return false
	}
	return c.remain > 0 || c.w-c.r >= frameNeed((*c.bp)[c.r:c.w])
}

// Buffered reports how many bytes of already-received input the
// ServerConn holds (payload or unparsed frame bytes): 0 when idle.
func (c *ServerConn) Buffered() int { return c.w - c.r }

// Read reads payload of the client's binary messages, answering pings and
// a close frame as it meets them. After a close frame it returns io.EOF;
// after a text message ErrTextMessage; after a framing error one wrapping
// ErrProtocol or ErrFrameTooLarge. These errors are sticky; deadline and
// other errors of the underlying conn are not.
func (c *ServerConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		for c.remain == 0 {
			if err := c.nextFrame(); err != nil {
				return 0, err
			}
		}
		want := len(p)
		if int64(want) > c.remain {
			want = int(c.remain)
		}
		var n int
		if c.r == c.w && want >= bufSize {
			// Large payload: read it straight into p, never past the frame.
			var err error
			if n, err = c.readConn(p[:want]); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return 0, err
			}
		} else {
			if err := c.fill(1); err != nil {
				return 0, err
			}
			n = copy(p[:want], (*c.bp)[c.r:c.w])
			c.consume(n)
		}
		if n == 0 {
			continue
		}
		k := c.kpos
		for i := range p[:n] {
			p[i] ^= c.key[(k+i)&3]
		}
		c.kpos = (k + n) & 3
		c.remain -= int64(n)
		return n, nil
	}
}

// nextFrame parses the next frame header, handling a control frame whole.
// It consumes nothing until the bytes it needs have arrived, so an error
// from conn (a deadline, say) leaves the ServerConn usable.
func (c *ServerConn) nextFrame() error {
	if err := c.fill(2); err != nil {
		return err
	}
	b0, b1 := (*c.bp)[c.r], (*c.bp)[c.r+1]
	fin, op, len7 := b0&0x80 != 0, b0&0x0f, int64(b1&0x7f)
	switch {
	case b0&0x70 != 0:
		return c.protocolError("reserved bits set")
	case b1&0x80 == 0:
		return c.protocolError("unmasked client frame")
	case op >= opClose && op <= opPong:
		if !fin {
			return c.protocolError("fragmented control frame")
		}
		if len7 > 125 {
			return c.protocolError("control frame longer than 125 bytes")
		}
	case op == opText:
		return c.fail(ErrTextMessage, closeUnsupportedData)
	case op == opBinary && c.inMsg:
		return c.protocolError("binary frame inside a fragmented message")
	case op == opContinuation && !c.inMsg:
		return c.protocolError("continuation frame outside a message")
	case op != opBinary && op != opContinuation:
		return c.protocolError(fmt.Sprintf("unknown opcode %#x", op))
	}

	need := frameNeed((*c.bp)[c.r:c.w])
	if err := c.fill(need); err != nil {
		return err
	}
	b := (*c.bp)[c.r:c.w]
	hdr := headerLen(b1)
	n := len7
	switch len7 {
	case 126:
		n = int64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return c.protocolError("64-bit length with the most significant bit set")
		}
		n = int64(u)
	}
	key := [4]byte(b[hdr-4 : hdr])

	if op < opClose {
		if c.maxFrame > 0 && n > c.maxFrame {
			return c.fail(fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, c.maxFrame), closeTooBig)
		}
		c.key, c.kpos, c.remain, c.inMsg = key, 0, n, !fin
		c.consume(hdr)
		return nil
	}

	payload := b[hdr:need]
	for i := range payload {
		payload[i] ^= key[i&3]
	}
	switch op {
	case opPing:
		_ = c.writeFrame(opPong, payload) // best effort: a broken conn shows on the next read
	case opClose:
		if len(payload) == 1 {
			return c.protocolError("close frame with a 1-byte payload")
		}
		// Echo the status code, as RFC 6455 §5.5.1 asks.
		_ = c.writeFrame(opClose, payload[:min(len(payload), 2)])
		c.err = io.EOF
		c.release()
		return c.err
	}
	c.consume(need)
	return nil
}

// headerLen returns the length of a masked frame header, given its
// second byte.
func headerLen(b1 byte) int {
	switch b1 & 0x7f {
	case 126:
		return 2 + 2 + 4
	case 127:
		return 2 + 8 + 4
	}
	return 2 + 4
}

// frameNeed returns how many bytes of the frame starting b must be
// buffered before nextFrame acts on it: its header, and for a control
// frame its payload too.
func frameNeed(b []byte) int {
	if len(b) < 2 {
		return 2
	}
	n := headerLen(b[1])
	if b[0]&0x08 != 0 {
		n += int(b[1] & 0x7f)
	}
	return n
}

func (c *ServerConn) protocolError(detail string) error {
	return c.fail(fmt.Errorf("%w: %s", ErrProtocol, detail), closeProtocolError)
}

// fail makes err sticky, drops buffered input and sends a close frame
// with code, best effort.
func (c *ServerConn) fail(err error, code uint16) error {
	c.err = err
	c.release()
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], code)
	_ = c.writeFrame(opClose, b[:])
	return err
}

// fill reads until at least need (≤ bufSize) bytes are buffered.
func (c *ServerConn) fill(need int) error {
	for c.w-c.r < need {
		if err := c.readMore(); err != nil {
			if err == io.EOF && (c.w > c.r || c.remain > 0 || c.inMsg) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// readMore reads once from conn into the read buffer, taking one from the
// pool if need be.
func (c *ServerConn) readMore() error {
	if c.bp == nil {
		c.bp = bufPool.Get().(*[]byte)
	}
	b := *c.bp
	if c.w == len(b) {
		c.w = copy(b, b[c.r:c.w])
		c.r = 0
	}
	n, err := c.readConn(b[c.w:])
	c.w += n
	if c.r == c.w {
		c.release()
	}
	return err
}

// readConn reads from conn, returning either data or an error: an error
// that came with data is kept for the next call.
func (c *ServerConn) readConn(p []byte) (int, error) {
	if err := c.pending; err != nil {
		c.pending = nil
		return 0, err
	}
	n, err := c.conn.Read(p)
	if n > 0 && err != nil {
		c.pending, err = err, nil
	}
	return n, err
}

// consume marks n buffered bytes read, returning the buffer to the pool
// once it is empty.
func (c *ServerConn) consume(n int) {
	c.r += n
	if c.r == c.w {
		c.release()
	}
}

func (c *ServerConn) release() {
	if c.bp != nil {
		bufPool.Put(c.bp)
		c.bp = nil
	}
	c.r, c.w = 0, 0
}

// Write sends p as one binary message.
func (c *ServerConn) Write(p []byte) (int, error) {
	if err := c.writeFrame(opBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeFrame sends one unmasked, final frame. Small frames go out in one
// conn.Write from a pooled buffer; larger ones as header and payload in
// one writev (for a TCP conn) rather than being copied.
func (c *ServerConn) writeFrame(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		return errCloseSent
	}
	if op == opClose {
		c.closeSent = true
	}

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	b := *bp
	b[0] = 0x80 | op
	var h int
	switch n := len(p); {
	case n <= 125:
		b[1], h = byte(n), 2
	case n <= 0xffff:
		b[1], h = 126, 4
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b[1], h = 127, 10
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
	var err error
	if len(p) <= len(b)-h {
		_, err = c.conn.Write(append(b[:h], p...))
	} else {
		bufs := net.Buffers{b[:h], p}
		_, err = bufs.WriteTo(c.conn)
	}
	return err
}

// Close closes the underlying conn, without a close frame.
func (c *ServerConn) Close() error { return c.conn.Close() }

func (c *ServerConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *ServerConn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *ServerConn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *ServerConn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *ServerConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
