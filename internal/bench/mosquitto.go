package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"

	"github.com/argus-remote/argus/internal/wsnet"
)

// Mosquitto is the reference broker, from Debian's package, on loopback.
type Mosquitto struct {
	cmd  *exec.Cmd
	dir  string
	URL  string
	done chan error
}

// StartMosquitto runs mosquitto with a WebSocket listener on a free port.
func StartMosquitto(ctx context.Context) (*Mosquitto, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, e := os.Stat("/usr/sbin/mosquitto"); e == nil {
			bin = "/usr/sbin/mosquitto"
		} else {
			return nil, fmt.Errorf("mosquitto is not installed (apt-get install mosquitto): %w", err)
		}
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	dir, err := os.MkdirTemp("", "argus-bench-mosquitto-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	// Debian's mosquitto 2.0.11 refuses to start its WebSocket listener on
	// these machines ("Unable to start any listening sockets", after a
	// successful bind), so the reference runs over plain TCP and says so.
	body := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nset_tcp_nodelay true\nlog_dest none\n", port)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, err
	}
	m := &Mosquitto{dir: dir, URL: "tcp://" + addr, done: make(chan error, 1)}
	m.cmd = exec.Command(bin, "-c", conf)
	if err := m.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { m.done <- m.cmd.Wait() }()
	// Ready when the port answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return m, nil
		}
		if time.Now().After(deadline) {
			m.Stop()
			return nil, fmt.Errorf("mosquitto did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RSS is mosquitto's resident memory in bytes.
func (m *Mosquitto) RSS() (int64, error) {
	s := &Server{cmd: m.cmd}
	return s.RSS()
}

// Stop ends mosquitto.
func (m *Mosquitto) Stop() {
	_ = m.cmd.Process.Kill()
	<-m.done
	_ = os.RemoveAll(m.dir)
}

// rawClient is a bare MQTT v5 client over WebSocket.
type rawClient struct {
	*paho.Client
	recv chan *paho.Publish
}

func dialRaw(ctx context.Context, url, source, clientID, user, pass string) (*rawClient, error) {
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 10 * time.Second}
	var conn net.Conn
	if addr, ok := strings.CutPrefix(url, "tcp://"); ok {
		tc, err := nd.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		conn = packets.NewThreadSafeConn(tc)
	} else {
		d := websocket.Dialer{NetDialContext: nd.DialContext, Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second,
			ReadBufferSize: 1024, WriteBufferSize: 1024}
		ws, resp, err := d.DialContext(ctx, url, http.Header{})
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		conn = wsnet.NewConn(ws)
	}
	c := &rawClient{recv: make(chan *paho.Publish, 64)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case c.recv <- pr.Packet:
			default:
			}
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 60}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
		cp.Password, cp.PasswordFlag = []byte(pass), true
	}
	if _, err := c.Connect(ctx, cp); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// IdleRaw connects n bare clients to url (each subscribing to a topic of
// its own) and returns them with their connect rate.
func IdleRaw(ctx context.Context, url string, n, sources int, creds func(i int) (id, user, pass, topic string)) ([]*rawClient, float64, error) {
	clients := make([]*rawClient, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id, user, pass, topic := creds(i)
			c, err := dialRaw(ctx, url, fmt.Sprintf("127.0.0.%d", 1+i%sources), id, user, pass)
			if err == nil {
				_, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	if n := failed.Load(); n > 0 {
		return clients, rate, fmt.Errorf("%d clients failed to connect: %v", n, firstErr.Load())
	}
	return clients, rate, nil
}

// CloseRaw disconnects clients.
func CloseRaw(clients []*rawClient) {
	for _, c := range clients {
		if c != nil {
			_ = c.Disconnect(&paho.Disconnect{})
		}
	}
}

// Echo measures bare request/response on a broker: a requester publishes,
// a responder echoes it back on another topic, k times in a row.
func Echo(ctx context.Context, url string, k int, roles func(role string) (id, u, p, reqTopic, respTopic string)) (Quantiles, error) {
	rid, ru, rp, reqTopic, respTopic := roles("requester")
	sid, su, sp, _, _ := roles("responder")
	req, err := dialRaw(ctx, url, "127.0.0.1", rid, ru, rp)
	if err != nil {
		return Quantiles{}, err
	}
	defer req.Disconnect(&paho.Disconnect{})
	resp, err := dialRaw(ctx, url, "127.0.0.1", sid, su, sp)
	if err != nil {
		return Quantiles{}, err
	}
	defer resp.Disconnect(&paho.Disconnect{})
	if _, err := resp.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: reqTopic, QoS: 1}}}); err != nil {
		return Quantiles{}, err
	}
	if _, err := req.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: respTopic, QoS: 1}}}); err != nil {
		return Quantiles{}, err
	}
	go func() {
		for p := range resp.recv {
			_, _ = resp.Publish(ctx, &paho.Publish{Topic: respTopic, QoS: 1, Payload: p.Payload})
		}
	}()
	var lats []time.Duration
	payload := []byte(strings.Repeat("x", 128))
	for i := 0; i < k+50; i++ {
		t0 := time.Now()
		if _, err := req.Publish(ctx, &paho.Publish{Topic: reqTopic, QoS: 1, Payload: payload}); err != nil {
			return Quantiles{}, err
		}
		select {
		case <-req.recv:
		case <-time.After(10 * time.Second):
			return Quantiles{}, fmt.Errorf("no echo")
		}
		if i >= 50 { // after warm-up
			lats = append(lats, time.Since(t0))
		}
	}
	return quantiles(lats), nil
}
