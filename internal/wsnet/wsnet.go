// Package wsnet presents a WebSocket connection as the byte stream MQTT
// runs over (MQTT-over-WebSocket, MQTT 5.0 §6): binary messages are read
// back to back as one stream; each Write, or each packet written while a
// Conn's Locker is held, is one binary message.
package wsnet

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrTextMessage is returned when the peer sends a text message.
var ErrTextMessage = errors.New("wsnet: text message on an MQTT WebSocket; binary required")

// Conn adapts a *websocket.Conn to net.Conn. Reads must come from one
// goroutine at a time; writes may come from several.
//
// Conn is also a sync.Locker, which paho holds around each packet it
// writes in several pieces (and pings from a goroutine of its own), so
// that packets do not interleave. The pieces written while it is held go
// out as one binary message when it is released: one frame and one system
// call per packet, not one per piece.
type Conn struct {
	net.Conn // for addresses and Close
	ws       *websocket.Conn
	cur      io.Reader

	packet sync.Mutex // the Locker

	wmu      sync.Mutex // guards ws writes and the fields below
	batching bool
	batch    []byte
	werr     error // a batched packet that could not be sent
}

// maxKeptBatch bounds the packet buffer a Conn keeps between packets.
const maxKeptBatch = 64 << 10

// NewConn wraps ws.
func NewConn(ws *websocket.Conn) *Conn {
	return &Conn{Conn: ws.NetConn(), ws: ws}
}

// Lock begins a packet: Writes until Unlock are sent together.
func (c *Conn) Lock() {
	c.packet.Lock()
	c.wmu.Lock()
	c.batching = true
	c.wmu.Unlock()
}

// Unlock sends the packet written since Lock as one message. Should that
// fail, the connection is closed, so its reader sees the failure, and
// later Writes return it.
func (c *Conn) Unlock() {
	c.wmu.Lock()
	if len(c.batch) > 0 && c.werr == nil {
		if err := c.ws.WriteMessage(websocket.BinaryMessage, c.batch); err != nil {
			c.werr = err
			_ = c.Conn.Close()
		}
	}
	c.batch = c.batch[:0]
	if cap(c.batch) > maxKeptBatch {
		c.batch = nil
	}
	c.batching = false
	c.wmu.Unlock()
	c.packet.Unlock()
}

func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.cur == nil {
			kind, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if kind != websocket.BinaryMessage {
				return 0, ErrTextMessage
			}
			c.cur = r
		}
		n, err := c.cur.Read(p)
		if errors.Is(err, io.EOF) {
			c.cur = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message, or adds it to the packet being
// written while the Locker is held.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if c.batching {
		c.batch = append(c.batch, p...)
		return len(p), nil
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetReadDeadline and SetWriteDeadline go through the WebSocket so its own
// state stays consistent with the socket's; the write deadline is state
// the writer reads, so it shares the writer's lock.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}

func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
