// Package mqtttest is a raw MQTT v5 client over WebSocket for tests that
// must act as a client the broker should refuse: it sends exactly what the
// test says, with no reconnects or retries.
package mqtttest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"

	"github.com/argus-remote/argus/internal/wsnet"
)

// Client is a connected raw client; Received delivers every PUBLISH it gets.
type Client struct {
	*paho.Client
	Received chan *paho.Publish
	// Disconnected delivers the server's DISCONNECT, if it sends one.
	Disconnected chan *paho.Disconnect
}

// Options describe a CONNECT.
type Options struct {
	ClientID string
	Username string
	Password string
	Header   http.Header // extra WebSocket handshake headers (Origin)
	// KeepAlive is the CONNECT's keep-alive in seconds; 0 means 30, and
	// NoKeepAlive sends 0, a client that asks for none.
	KeepAlive   uint16
	NoKeepAlive bool
}

// Dial opens the WebSocket and sends CONNECT. It returns the CONNACK (nil
// when none arrived) and an error when the broker refused the connection.
func Dial(t testing.TB, url string, o Options) (*Client, *paho.Connack, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := *websocket.DefaultDialer
	d.Subprotocols = []string{"mqtt"}
	ws, resp, err := d.DialContext(ctx, url, o.Header)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, nil, err
	}
	c := &Client{Received: make(chan *paho.Publish, 1024), Disconnected: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: wsnet.NewConn(ws),
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case c.Disconnected <- d:
			default:
			}
		},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case c.Received <- pr.Packet:
				default:
				}
				return true, nil
			},
		},
	})
	cp := &paho.Connect{
		ClientID:   o.ClientID,
		CleanStart: true,
		KeepAlive:  30,
	}
	if o.KeepAlive != 0 {
		cp.KeepAlive = o.KeepAlive
	}
	if o.NoKeepAlive {
		cp.KeepAlive = 0
	}
	if o.Username != "" {
		cp.Username, cp.UsernameFlag = o.Username, true
	}
	if o.Password != "" {
		cp.Password, cp.PasswordFlag = []byte(o.Password), true
	}
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		_ = ws.Close()
		return nil, ack, err
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c, ack, nil
}
