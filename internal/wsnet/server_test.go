package wsnet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var testKey = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// clientFrame builds a masked client frame with first byte b0.
func clientFrame(b0 byte, payload []byte) []byte {
	return rawFrame(b0, true, payload)
}

func rawFrame(b0 byte, masked bool, payload []byte) []byte {
	f := []byte{b0, 0}
	switch n := len(payload); {
	case n <= 125:
		f[1] = byte(n)
	case n <= 0xffff:
		f[1] = 126
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f[1] = 127
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	if !masked {
		return append(f, payload...)
	}
	f[1] |= 0x80
	f = append(f, testKey[:]...)
	for i, b := range payload {
		f = append(f, b^testKey[i&3])
	}
	return f
}

func binFrame(p string) []byte { return clientFrame(0x80|opBinary, []byte(p)) }

// readServerFrame parses one server frame, checking that it is unmasked
// and its length minimally encoded. It returns the header and payload.
func readServerFrame(t *testing.T, r io.Reader) (hdr, payload []byte) {
	t.Helper()
	hdr = make([]byte, 2, 10)
	_, err := io.ReadFull(r, hdr)
	require.NoError(t, err)
	require.Zero(t, hdr[1]&0x80, "server frames must not be masked")
	n := uint64(hdr[1])
	switch n {
	case 126:
		hdr = hdr[:4]
		_, err = io.ReadFull(r, hdr[2:])
		require.NoError(t, err)
		n = uint64(binary.BigEndian.Uint16(hdr[2:]))
		require.Greater(t, n, uint64(125))
	case 127:
		hdr = hdr[:10]
		_, err = io.ReadFull(r, hdr[2:])
		require.NoError(t, err)
		n = binary.BigEndian.Uint64(hdr[2:])
		require.Greater(t, n, uint64(0xffff))
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	require.NoError(t, err)
	return hdr, payload
}

// tcpPair returns a loopback client conn and the ServerConn for its other end.
func tcpPair(t *testing.T, maxFrame int64) (net.Conn, *ServerConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	sc := <-accepted
	require.NotNil(t, sc)
	t.Cleanup(func() { client.Close(); sc.Close() })
	return client, NewServerConn(sc, maxFrame)
}

// waitPending starts WaitRead and checks it is still waiting a moment
// later (a moment: it must not return, so there is no event to await).
func waitPending(t *testing.T, sc *ServerConn, why string) chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- sc.WaitRead() }()
	select {
	case err := <-done:
		t.Fatalf("WaitRead returned %v %s", err, why)
	case <-time.After(50 * time.Millisecond):
	}
	return done
}

func waitResult(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		return nil
	}
}

func TestServerConnReadsBinaryStream(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	big := bytes.Repeat([]byte("0123456789abcdef"), 10000) // read straight into p
	var in []byte
	in = append(in, binFrame("")...) // empty frames are skipped
	in = append(in, binFrame("hello ")...)
	in = append(in, clientFrame(opBinary, []byte("frag"))...)  // fragmented message ...
	in = append(in, clientFrame(0x80|opPing, []byte("p1"))...) // ... with a ping inside
	in = append(in, clientFrame(opContinuation, nil)...)       // ... an empty fragment
	in = append(in, clientFrame(0x80|opContinuation, []byte("mented "))...)
	in = append(in, clientFrame(0x80|opPong, []byte("ignored"))...) // unsolicited pong
	in = append(in, clientFrame(0x80|opBinary, big)...)
	go client.Write(in)

	want := append([]byte("hello fragmented "), big...)
	got := make([]byte, len(want))
	_, err := io.ReadFull(sc, got)
	require.NoError(t, err)
	require.Equal(t, want, got)
	assert.Zero(t, sc.Buffered())
	assert.Nil(t, sc.bp, "read buffer should be back in the pool")

	hdr, payload := readServerFrame(t, client)
	assert.Equal(t, byte(0x80|opPong), hdr[0])
	assert.Equal(t, "p1", string(payload))
}

func TestServerConnBigFrameSmallReads(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	big := make([]byte, 50000)
	for i := range big {
		big[i] = byte(i * 7)
	}
	go client.Write(clientFrame(0x80|opBinary, big))
	got, err := io.ReadAll(io.LimitReader(readerFunc(func(p []byte) (int, error) {
		return sc.Read(p[:min(len(p), 1000)])
	}), int64(len(big))))
	require.NoError(t, err)
	require.Equal(t, big, got)
	assert.Zero(t, sc.Buffered())
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestServerConnClose(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"code", []byte{0x03, 0xe8}},
		{"code and reason", []byte{0x03, 0xe9, 'b', 'y', 'e'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, sc := tcpPair(t, 1<<20)
			_, err := client.Write(append(binFrame("x"), clientFrame(0x80|opClose, tc.payload)...))
			require.NoError(t, err)
			b, err := io.ReadAll(sc)
			require.NoError(t, err) // ReadAll turns io.EOF into nil
			assert.Equal(t, "x", string(b))
			n, err := sc.Read(make([]byte, 1))
			assert.Equal(t, 0, n)
			assert.ErrorIs(t, err, io.EOF)
			assert.NoError(t, sc.WaitRead(), "WaitRead reports readiness; Read the EOF")

			hdr, payload := readServerFrame(t, client)
			assert.Equal(t, byte(0x80|opClose), hdr[0])
			assert.Equal(t, string(tc.payload[:min(len(tc.payload), 2)]), string(payload))

			_, err = sc.Write([]byte("late"))
			assert.ErrorIs(t, err, net.ErrClosed, "no data after a close frame")
		})
	}
}

func TestServerConnProtocolErrors(t *testing.T) {
	longLen := []byte{0x80 | opBinary, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1}
	longLen = append(longLen, testKey[:]...)
	for _, tc := range []struct {
		name string
		in   []byte
		want error
		code uint16
	}{
		{"unmasked", rawFrame(0x80|opBinary, false, []byte("a")), ErrProtocol, 1002},
		{"rsv1", clientFrame(0xc0|opBinary, []byte("a")), ErrProtocol, 1002},
		{"rsv3", clientFrame(0x90|opBinary, []byte("a")), ErrProtocol, 1002},
		{"text", clientFrame(0x80|opText, []byte("a")), ErrTextMessage, 1003},
		{"too large", clientFrame(0x80|opBinary, make([]byte, 17)), ErrFrameTooLarge, 1009},
		{"64-bit length msb", longLen, ErrProtocol, 1002},
		{"control too long", clientFrame(0x80|opPing, make([]byte, 126)), ErrProtocol, 1002},
		{"fragmented control", clientFrame(opPing, nil), ErrProtocol, 1002},
		{"close 1 byte", clientFrame(0x80|opClose, []byte{3}), ErrProtocol, 1002},
		{"continuation first", clientFrame(0x80|opContinuation, []byte("a")), ErrProtocol, 1002},
		{"binary in message", append(clientFrame(opBinary, nil), binFrame("a")...), ErrProtocol, 1002},
		{"opcode 3", clientFrame(0x83, nil), ErrProtocol, 1002},
		{"opcode 0xb", clientFrame(0x8b, nil), ErrProtocol, 1002},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, sc := tcpPair(t, 16)
			_, err := client.Write(tc.in)
			require.NoError(t, err)
			p := make([]byte, 64)
			_, err = sc.Read(p)
			require.ErrorIs(t, err, tc.want)
			_, err2 := sc.Read(p)
			assert.Equal(t, err, err2, "errors are sticky")
			assert.Zero(t, sc.Buffered())
			assert.Nil(t, sc.bp)

			hdr, payload := readServerFrame(t, client)
			assert.Equal(t, byte(0x80|opClose), hdr[0])
			require.Len(t, payload, 2)
			assert.Equal(t, tc.code, binary.BigEndian.Uint16(payload))
		})
	}
}

func TestServerConnWriteFraming(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 4000, 4094, 4095, 65535, 65536, 100000} {
		client, sc := tcpPair(t, 1<<20)
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i)
		}
		done := make(chan error, 1)
		go func() {
			m, err := sc.Write(p)
			if err == nil && m != n {
				err = io.ErrShortWrite
			}
			done <- err
		}()
		hdr, payload := readServerFrame(t, client)
		require.NoError(t, waitResult(t, done))
		assert.Equal(t, byte(0x80|opBinary), hdr[0], "FIN binary")
		switch {
		case n <= 125:
			assert.Len(t, hdr, 2)
		case n <= 0xffff:
			assert.Len(t, hdr, 4)
		default:
			assert.Len(t, hdr, 10)
		}
		assert.Equal(t, p, payload, "length %d", n)
	}
}

func TestServerConnConcurrentWrites(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				p := bytes.Repeat([]byte{byte(w)}, 1+(i*997)%9000)
				_, err := sc.Write(p)
				assert.NoError(t, err)
			}
		})
	}
	for range writers * each {
		_, payload := readServerFrame(t, client)
		require.NotEmpty(t, payload)
		require.Equal(t, bytes.Repeat(payload[:1], len(payload)), payload, "interleaved frames")
	}
	wg.Wait()
}

func TestServerConnWaitRead(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	require.NotNil(t, sc.raw, "a TCP conn is waited on by peeking")

	done := waitPending(t, sc, "before any input")
	_, err := client.Write(binFrame("hello"))
	require.NoError(t, err)
	require.NoError(t, waitResult(t, done))
	assert.Zero(t, sc.Buffered(), "WaitRead must not read")
	assert.Nil(t, sc.bp, "WaitRead must not take a buffer")

	p := make([]byte, 1)
	_, err = sc.Read(p)
	require.NoError(t, err)
	assert.Equal(t, "h", string(p))
	assert.Equal(t, 4, sc.Buffered())

	// Buffered payload: WaitRead returns at once, though the socket is empty.
	go func() { done <- sc.WaitRead() }()
	require.NoError(t, waitResult(t, done))

	rest := make([]byte, 10)
	n, err := sc.Read(rest)
	require.NoError(t, err)
	assert.Equal(t, "ello", string(rest[:n]))
	assert.Zero(t, sc.Buffered())
	assert.Nil(t, sc.bp)
}

// A partial header is not enough for Read to act on: WaitRead waits for more.
func TestServerConnWaitReadPartialHeader(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	f := append(binFrame("ab"), binFrame("cd")...)
	_, err := client.Write(f[:len(f)-len("cd")-3]) // first frame and part of the second's header
	require.NoError(t, err)
	p := make([]byte, 2)
	_, err = io.ReadFull(sc, p)
	require.NoError(t, err)
	require.Equal(t, "ab", string(p))
	for sc.Buffered() < 3 { // the rest of the write may arrive separately
		require.NoError(t, sc.WaitRead())
		require.NoError(t, sc.readMore())
	}

	done := waitPending(t, sc, "on a partial header")
	_, err = client.Write(f[len(f)-len("cd")-3:])
	require.NoError(t, err)
	require.NoError(t, waitResult(t, done))
	_, err = io.ReadFull(sc, p)
	require.NoError(t, err)
	require.Equal(t, "cd", string(p))
}

func TestServerConnWaitReadDeadline(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	require.NoError(t, sc.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	err := sc.WaitRead()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	// The deadline leaves the conn usable.
	require.NoError(t, sc.SetReadDeadline(time.Time{}))
	_, err = client.Write(binFrame("ok"))
	require.NoError(t, err)
	require.NoError(t, sc.WaitRead())
	p := make([]byte, 2)
	_, err = io.ReadFull(sc, p)
	require.NoError(t, err)
	assert.Equal(t, "ok", string(p))
}

func TestServerConnWaitReadDeadlineMidHeader(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	f := binFrame("abc")
	_, err := client.Write(f[:3])
	require.NoError(t, err)
	require.NoError(t, sc.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err = sc.Read(make([]byte, 3))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	require.NoError(t, sc.SetReadDeadline(time.Time{}))
	_, err = client.Write(f[3:])
	require.NoError(t, err)
	p := make([]byte, 3)
	_, err = io.ReadFull(sc, p)
	require.NoError(t, err)
	assert.Equal(t, "abc", string(p))
}

func TestServerConnWaitReadClosed(t *testing.T) {
	_, sc := tcpPair(t, 1<<20)
	done := waitPending(t, sc, "before any input")
	require.NoError(t, sc.Close())
	require.ErrorIs(t, waitResult(t, done), net.ErrClosed, "Close wakes a waiting WaitRead")
	require.ErrorIs(t, sc.WaitRead(), net.ErrClosed, "WaitRead after Close")
}

func TestServerConnWaitReadEOF(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	require.NoError(t, client.Close())
	require.NoError(t, sc.WaitRead())
	_, err := sc.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
}

func TestServerConnUnexpectedEOF(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	f := binFrame("abcdef")
	_, err := client.Write(f[:len(f)-2])
	require.NoError(t, err)
	require.NoError(t, client.Close())
	b, err := io.ReadAll(sc)
	assert.Equal(t, "abcd", string(b))
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// On a conn with no file descriptor WaitRead reads into a pooled buffer.
func TestServerConnWaitReadFallback(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	sc := NewServerConn(server, 1<<20)
	defer sc.Close()
	require.Nil(t, sc.raw)

	done := waitPending(t, sc, "before any input")
	_, err := client.Write(binFrame("hi"))
	require.NoError(t, err)
	require.NoError(t, waitResult(t, done))
	assert.Equal(t, len(binFrame("hi")), sc.Buffered())
	require.NoError(t, sc.WaitRead(), "buffered input")
	p := make([]byte, 2)
	_, err = io.ReadFull(sc, p)
	require.NoError(t, err)
	assert.Equal(t, "hi", string(p))
	assert.Nil(t, sc.bp)

	require.NoError(t, sc.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	require.ErrorIs(t, sc.WaitRead(), os.ErrDeadlineExceeded)
	assert.Nil(t, sc.bp)
	require.NoError(t, sc.SetReadDeadline(time.Time{}))

	require.NoError(t, client.Close())
	require.NoError(t, sc.WaitRead(), "EOF is readiness")
	_, err = sc.Read(p)
	require.ErrorIs(t, err, io.EOF)

	require.NoError(t, sc.Close())
	require.ErrorIs(t, sc.WaitRead(), io.ErrClosedPipe)
}

func TestServerConnWaitReadAllocs(t *testing.T) {
	client, sc := tcpPair(t, 1<<20)
	_, err := client.Write([]byte{0x82})
	require.NoError(t, err)
	require.NoError(t, sc.WaitRead())
	allocs := testing.AllocsPerRun(100, func() { _ = sc.WaitRead() })
	assert.Zero(t, allocs)
}

// TestServerConnGorilla checks interoperation with gorilla/websocket's client.
func TestServerConnGorilla(t *testing.T) {
	srvErr := make(chan error, 1)
	var upgrader websocket.Upgrader
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			srvErr <- err
			return
		}
		sc := NewServerConn(ws.NetConn(), 1<<20)
		defer sc.Close()
		buf := make([]byte, 64<<10)
		for {
			if err := sc.WaitRead(); err != nil {
				srvErr <- err
				return
			}
			n, err := sc.Read(buf)
			if err != nil {
				srvErr <- err
				return
			}
			if _, err := sc.Write(buf[:n]); err != nil {
				srvErr <- err
				return
			}
		}
	}))
	defer ts.Close()

	// A small write buffer makes gorilla fragment longer messages.
	d := websocket.Dialer{WriteBufferSize: 256, ReadBufferSize: 256}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(ts.URL, "http"), nil)
	require.NoError(t, err)
	defer ws.Close()

	pongs := make(chan string, 1)
	ws.SetPongHandler(func(s string) error { pongs <- s; return nil })
	type message struct {
		data []byte
		err  error
	}
	msgs := make(chan message, 100)
	go func() {
		for {
			kind, p, err := ws.ReadMessage()
			if err == nil && kind != websocket.BinaryMessage {
				err = errors.New("not binary")
			}
			msgs <- message{p, err}
			if err != nil {
				return
			}
		}
	}()

	var sent []byte
	send := func(p []byte) {
		require.NoError(t, ws.WriteMessage(websocket.BinaryMessage, p))
		sent = append(sent, p...)
	}
	send([]byte("hello"))
	send(nil)
	send(bytes.Repeat([]byte("fragmented "), 100))
	big := make([]byte, 70000)
	for i := range big {
		big[i] = byte(i % 251)
	}
	send(big)
	w, err := ws.NextWriter(websocket.BinaryMessage)
	require.NoError(t, err)
	for _, s := range []string{"several ", "writes ", strings.Repeat("x", 600)} {
		_, err = w.Write([]byte(s))
		require.NoError(t, err)
		sent = append(sent, s...)
	}
	require.NoError(t, w.Close())
	require.NoError(t, ws.WriteControl(websocket.PingMessage, []byte("ping!"), time.Now().Add(5*time.Second)))

	var got []byte
	for len(got) < len(sent) {
		select {
		case m := <-msgs:
			require.NoError(t, m.err)
			got = append(got, m.data...)
		case <-time.After(10 * time.Second):
			t.Fatal("timed out")
		}
	}
	require.Equal(t, sent, got)
	select {
	case s := <-pongs:
		assert.Equal(t, "ping!", s)
	case <-time.After(10 * time.Second):
		t.Fatal("no pong")
	}

	require.NoError(t, ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")))
	require.ErrorIs(t, waitResult(t, srvErr), io.EOF)
	select {
	case m := <-msgs:
		assert.True(t, websocket.IsCloseError(m.err, websocket.CloseNormalClosure), "got %v", m.err)
	case <-time.After(10 * time.Second):
		t.Fatal("no close reply")
	}
}

// fakeConn is a net.Conn without a file descriptor reading from r at most
// chunk bytes at a time and discarding writes.
type fakeConn struct {
	r     *bytes.Reader
	chunk int
}

func (c *fakeConn) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), c.chunk)])
}
func (c *fakeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return nil }
func (c *fakeConn) RemoteAddr() net.Addr             { return nil }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// decodeAll is a whole-input reference decoder: the payload Read must
// return for in, and the error it must end with.
func decodeAll(in []byte, maxFrame int64) ([]byte, error) {
	var out []byte
	inMsg := false
	for {
		if len(in) == 0 {
			if inMsg {
				return out, io.ErrUnexpectedEOF
			}
			return out, io.EOF
		}
		if len(in) < 2 {
			return out, io.ErrUnexpectedEOF
		}
		fin, rsv, op := in[0]&0x80 != 0, in[0]&0x70, in[0]&0x0f
		masked, n := in[1]&0x80 != 0, uint64(in[1]&0x7f)
		control := op >= 8
		switch {
		case rsv != 0 || !masked:
			return out, ErrProtocol
		case control && (op > opPong || !fin || n > 125):
			return out, ErrProtocol
		case op == opText:
			return out, ErrTextMessage
		case !control && op > opBinary,
			op == opBinary && inMsg,
			op == opContinuation && !inMsg:
			return out, ErrProtocol
		}
		hdr := 2
		switch n {
		case 126:
			hdr += 2
		case 127:
			hdr += 8
		}
		need := hdr + 4
		if control {
			need += int(n)
		}
		if len(in) < need {
			return out, io.ErrUnexpectedEOF
		}
		switch n {
		case 126:
			n = uint64(binary.BigEndian.Uint16(in[2:]))
		case 127:
			n = binary.BigEndian.Uint64(in[2:])
		}
		if n > 1<<63-1 {
			return out, ErrProtocol
		}
		if !control && n > uint64(maxFrame) {
			return out, ErrFrameTooLarge
		}
		key := in[hdr : hdr+4]
		in = in[hdr+4:]
		avail := min(n, uint64(len(in)))
		payload := make([]byte, avail)
		for i := range payload {
			payload[i] = in[i] ^ key[i%4]
		}
		in = in[avail:]
		switch {
		case !control:
			out = append(out, payload...)
			if avail < n {
				return out, io.ErrUnexpectedEOF
			}
			inMsg = !fin
		case op == opClose && n == 1:
			return out, ErrProtocol
		case op == opClose:
			return out, io.EOF
		}
	}
}

func FuzzServerConnRead(f *testing.F) {
	seed := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	f.Add(seed(binFrame("hello"), binFrame("")), uint8(255), uint16(100), false)
	f.Add(seed(clientFrame(opBinary, []byte("a")), clientFrame(0x80|opPing, []byte("p")),
		clientFrame(0x80|opContinuation, []byte("b"))), uint8(0), uint16(1), true)
	f.Add(seed(clientFrame(0x80|opBinary, make([]byte, 900)), clientFrame(0x80|opClose, []byte{3, 232})), uint8(7), uint16(5000), true)
	f.Add(seed(binFrame("x"), clientFrame(0x80|opText, []byte("t"))), uint8(3), uint16(2), false)
	f.Add(seed(binFrame("x"), rawFrame(0x82, false, []byte("u"))), uint8(3), uint16(2), false)
	f.Add(seed(clientFrame(0x80|opBinary, make([]byte, 70000))), uint8(200), uint16(4500), false)
	f.Add([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, uint8(1), uint16(10), false)

	const maxFrame = 1000
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, psize uint16, wait bool) {
		sc := NewServerConn(&fakeConn{r: bytes.NewReader(in), chunk: int(chunk) + 1}, maxFrame)
		p := make([]byte, int(psize)%5000+1)
		var got []byte
		var err error
		for {
			if wait {
				if werr := sc.WaitRead(); werr != nil {
					t.Fatalf("WaitRead: %v", werr)
				}
			}
			var n int
			n, err = sc.Read(p)
			if err != nil {
				if n != 0 {
					t.Fatalf("Read returned %d bytes with %v", n, err)
				}
				break
			}
			if n == 0 {
				t.Fatal("Read returned 0, nil")
			}
			got = append(got, p[:n]...)
		}
		want, wantErr := decodeAll(in, maxFrame)
		if !bytes.Equal(got, want) {
			t.Fatalf("payload %q, want %q", got, want)
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("error %v, want %v", err, wantErr)
		}
		if sc.Buffered() != 0 && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%d bytes left buffered after %v", sc.Buffered(), err)
		}
	})
}

// BenchmarkServerConnRead reads 100-byte binary messages (an agent's
// heartbeat or result is about this size) through the framing.
func BenchmarkServerConnRead(b *testing.B) {
	const perRun = 1000
	var stream []byte
	for range perRun {
		stream = append(stream, clientFrame(0x80|opBinary, make([]byte, 100))...)
	}
	p := make([]byte, 256)
	b.SetBytes(100 * perRun)
	b.ReportAllocs()
	for b.Loop() {
		c := NewServerConn(&fakeConn{r: bytes.NewReader(stream), chunk: 4096}, 1<<20)
		for n := 0; n < 100*perRun; {
			k, err := c.Read(p)
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
}

// BenchmarkServerConnWrite frames 100-byte writes.
func BenchmarkServerConnWrite(b *testing.B) {
	c := NewServerConn(&fakeConn{r: bytes.NewReader(nil), chunk: 1}, 1<<20)
	p := make([]byte, 100)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
	}
}
