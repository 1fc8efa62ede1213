package mqtttest

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// DialRaw opens a WebSocket to url from the loopback address source (any
// of 127.0.0.0/8 on Linux; "" for the default) and completes the
// handshake, with nothing more: for tests that act as a hostile client
// writing frames by hand. The returned conn has nothing buffered past the
// handshake response.
func DialRaw(ctx context.Context, rawURL, source string) (net.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("mqtttest: DialRaw speaks ws:// only, not %s", u.Scheme)
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13" +
		"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		_ = c.Close()
		return nil, err
	}
	// Read the response byte by byte, so nothing after it is consumed.
	br := bufio.NewReaderSize(oneByte{c}, 16)
	var resp strings.Builder
	for !strings.HasSuffix(resp.String(), "\r\n\r\n") {
		b, err := br.ReadByte()
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("mqtttest: handshake: %w", err)
		}
		resp.WriteByte(b)
		if resp.Len() > 4096 {
			_ = c.Close()
			return nil, errors.New("mqtttest: handshake response too long")
		}
	}
	if !strings.HasPrefix(resp.String(), "HTTP/1.1 101 ") {
		_ = c.Close()
		return nil, fmt.Errorf("mqtttest: handshake refused: %q", strings.SplitN(resp.String(), "\r\n", 2)[0])
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// oneByte reads at most one byte at a time.
type oneByte struct{ c net.Conn }

func (o oneByte) Read(p []byte) (int, error) { return o.c.Read(p[:min(len(p), 1)]) }

// ClientFrame is a final, masked binary WebSocket frame holding payload,
// as a client sends it.
func ClientFrame(payload []byte) []byte {
	f := []byte{0x82, 0x80}
	switch n := len(payload); {
	case n <= 125:
		f[1] |= byte(n)
	case n <= 0xffff:
		f[1] |= 126
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f[1] |= 127
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	key := [4]byte{0x1f, 0x2e, 0x3d, 0x4c}
	f = append(f, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i&3])
	}
	return f
}

// FixedHeader is an MQTT fixed header: its first byte (the packet type and
// flags: 0x10 for CONNECT, 0x30 for a QoS 0 PUBLISH) and the remaining
// length it declares.
func FixedHeader(typeAndFlags byte, remaining int) []byte {
	b := []byte{typeAndFlags}
	for {
		d := byte(remaining % 128)
		remaining /= 128
		if remaining > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if remaining == 0 {
			return b
		}
	}
}
