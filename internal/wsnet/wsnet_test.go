package wsnet

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// messagePeer starts a WebSocket server that reports each binary message
// it receives, and returns a Conn dialled to it.
func messagePeer(t *testing.T) (*Conn, <-chan []byte) {
	t.Helper()
	msgs := make(chan []byte, 256)
	var upgrader websocket.Upgrader
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			_, p, err := ws.ReadMessage()
			if err != nil {
				close(msgs)
				return
			}
			msgs <- p
		}
	}))
	t.Cleanup(ts.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http"), nil)
	require.NoError(t, err)
	c := NewConn(ws)
	t.Cleanup(func() { c.Close() })
	return c, msgs
}

func next(t *testing.T, msgs <-chan []byte) string {
	t.Helper()
	select {
	case p, ok := <-msgs:
		require.True(t, ok, "peer closed")
		return string(p)
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
		return ""
	}
}

func TestConnWritesUnderLockAreOneMessage(t *testing.T) {
	c, msgs := messagePeer(t)
	c.Lock()
	_, err := c.Write([]byte("ab"))
	require.NoError(t, err)
	_, err = c.Write([]byte("cd"))
	require.NoError(t, err)
	c.Unlock()
	_, err = c.Write([]byte("ef"))
	require.NoError(t, err)
	c.Lock()
	_, err = c.Write(nil) // an empty packet sends no message
	c.Unlock()
	require.NoError(t, err)
	_, err = c.Write([]byte("gh"))
	require.NoError(t, err)

	assert.Equal(t, "abcd", next(t, msgs))
	assert.Equal(t, "ef", next(t, msgs), "a Write without the Locker is its own message")
	assert.Equal(t, "gh", next(t, msgs), "nothing was sent for the empty packet")
}

// paho writes a PUBLISH in pieces (header, topic and properties, payload)
// under the conn's Locker: it must leave as one message holding the whole
// packet, and packets written at once from several goroutines must not mix.
func TestConnPahoPacketsAreWholeMessages(t *testing.T) {
	c, msgs := messagePeer(t)
	const writers, each = 4, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				pub := &packets.Publish{Topic: "argus/v1/x", QoS: 1, PacketID: uint16(w*each + i + 1), Payload: []byte(strings.Repeat("p", 100))}
				_, err := pub.WriteTo(c)
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	seen := map[uint16]bool{}
	for range writers * each {
		msg := next(t, msgs)
		cp, err := packets.ReadPacket(strings.NewReader(msg))
		require.NoError(t, err)
		pub, ok := cp.Content.(*packets.Publish)
		require.True(t, ok)
		assert.Equal(t, "argus/v1/x", pub.Topic)
		assert.Len(t, pub.Payload, 100, "the whole packet is in one message")
		seen[pub.PacketID] = true
	}
	assert.Len(t, seen, writers*each)
}

// A packet that cannot be sent is reported to the reader (the connection
// closes, so paho sees it down) and to every later writer.
func TestConnFailedPacketClosesAndIsReported(t *testing.T) {
	c, _ := messagePeer(t)
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 16)) // the peer never sends
		read <- err
	}()
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(-time.Second)))
	c.Lock()
	_, err := c.Write([]byte("lost"))
	require.NoError(t, err, "a piece is only buffered")
	c.Unlock()

	select {
	case err := <-read:
		assert.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the reader was not woken by the failed packet")
	}
	_, err = c.Write([]byte("after"))
	assert.Error(t, err, "writes after a failed packet fail")
}
