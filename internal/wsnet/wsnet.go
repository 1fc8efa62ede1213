// Package wsnet presents a WebSocket connection as the byte stream MQTT
// runs over (MQTT-over-WebSocket, MQTT 5.0 §6): binary messages are read
// back to back as one stream; each Write is one binary message.
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
type Conn struct {
	net.Conn // for addresses and Close
	ws       *websocket.Conn
	cur      io.Reader
	wmu      sync.Mutex

	// paho writes a packet in several Writes and pings from a goroutine
	// of its own; it holds a conn's Locker around each packet, so packets
	// do not interleave (autopaho's WebSocket conn does the same).
	sync.Locker
}

// NewConn wraps ws.
func NewConn(ws *websocket.Conn) *Conn {
	return &Conn{Conn: ws.NetConn(), ws: ws, Locker: new(sync.Mutex)}
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

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
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
