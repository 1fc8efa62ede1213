// Package broker runs the embedded MQTT broker (mochi-mqtt v2) that agents
// and monitors dial into over MQTT-over-WebSocket.
//
// The broker denies by default: a client is admitted, and a topic allowed,
// only when the Policy says so. The control plane talks to the broker
// through mochi's in-process inline client, never over the network, and the
// broker never opens a connection to anyone.
package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	// DefaultMaxPacketSize bounds every MQTT packet in either direction.
	DefaultMaxPacketSize = 64 << 10
	// DefaultMaxConnectSize bounds a CONNECT, the one packet a client sends
	// before it is authenticated. An agent's is under 300 bytes, and a
	// watcher's, whose password is an operator or viewer token (91
	// characters, a password may have 256), not much more: the rest is
	// room for MQTT v5 properties.
	DefaultMaxConnectSize = 4 << 10
	// DefaultConnectTimeout bounds the time from accepting a connection to
	// having read its CONNECT, the WebSocket handshake included.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxPendingPerSource bounds the connections from one source
	// address that have not yet been answered their CONNECT.
	DefaultMaxPendingPerSource = 64
	// DescriptorReserve is what DefaultMaxClients leaves of the process's
	// descriptor limit for everything else the server holds open: its
	// database pool, the cluster's connections, API clients, files.
	DescriptorReserve = 256
	// BusyAnswers is how many connections a broker holding MaxClients
	// reads at once to answer them 0x89 (server busy). One more is closed
	// as it is accepted: an agent gets its answer at once either way, and
	// a storm of connections at a full node cannot take the descriptors
	// DescriptorReserve keeps for the rest of the server.
	BusyAnswers = 64
)

// DefaultMaxClients bounds the connected clients by the process's soft
// descriptor limit, less DescriptorReserve: a node that ran out of
// descriptors could not renew its lease or reach its database, and would
// lose every agent it holds, not just the one too many.
func DefaultMaxClients() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > math.MaxInt32 {
		return math.MaxInt32
	}
	return max(1, int(rl.Cur)-DescriptorReserve)
}

// Config configures the broker.
type Config struct {
	// WSAddr is the WebSocket listener's TCP address ("127.0.0.1:8083").
	WSAddr string
	// WSPath is the HTTP path MQTT is served on ("/mqtt").
	WSPath string
	// TLS, when set, serves wss:// instead of ws://.
	TLS *tls.Config
	// AllowedOrigins are the browser origins allowed to open a WebSocket;
	// requests without an Origin header (agents, tools) are not browsers
	// and are let through to MQTT authentication.
	AllowedOrigins []string
	// MaxPacketSize bounds every packet; 0 means DefaultMaxPacketSize.
	MaxPacketSize uint32
	// MaxConnectSize bounds a CONNECT (at most MaxPacketSize); 0 means
	// DefaultMaxConnectSize.
	MaxConnectSize uint32
	// ConnectTimeout bounds the time from accepting a connection to having
	// read its CONNECT, the WebSocket handshake included; a connection
	// still without one is closed. 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxPendingPerSource bounds the connections from one source address
	// (an IPv4 address, an IPv6 /64) that have not yet been answered their
	// CONNECT: one more is closed as it is accepted. 0 means
	// DefaultMaxPendingPerSource; less than 0, no bound.
	MaxPendingPerSource int
	// MaxClients bounds the clients connected at once: one more is
	// answered MQTT v5 0x89 (server busy), so that an agent tries another
	// node, and past BusyAnswers more pending, closed as it is accepted.
	// 0 means DefaultMaxClients().
	MaxClients int
	// Policy decides who connects and what they touch; nil refuses all.
	Policy Policy
	// Hooks observe the broker (presence); they must not answer
	// authentication or ACL checks, which belong to Policy alone.
	Hooks  []mqtt.Hook
	Logger *slog.Logger
}

// Broker is a running embedded broker.
type Broker struct {
	srv *mqtt.Server
	ws  *wsListener
	log *slog.Logger
	// control is the control plane's own in-process client: its publishes
	// skip the ACL (it is the only publisher of activations and commands)
	// and may carry MQTT v5 properties.
	control *mqtt.Client
	// redirect sends new connections to another node (Redirect).
	redirect atomic.Bool
}

// New builds a broker and binds its listener; Start begins serving.
func New(cfg Config) (*Broker, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxPacketSize == 0 {
		cfg.MaxPacketSize = DefaultMaxPacketSize
	}
	if cfg.MaxConnectSize == 0 {
		cfg.MaxConnectSize = DefaultMaxConnectSize
	}
	cfg.MaxConnectSize = min(cfg.MaxConnectSize, cfg.MaxPacketSize)
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxPendingPerSource == 0 {
		cfg.MaxPendingPerSource = DefaultMaxPendingPerSource
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients()
	}
	if cfg.WSPath == "" {
		cfg.WSPath = "/mqtt"
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = cfg.MaxPacketSize
	// Until a client has authenticated, it may hold no more than a CONNECT
	// needs (mochi reads a packet into a buffer that grows as its bytes
	// arrive, so it holds no more than it was sent, either).
	caps.MaximumConnectPacketSize = cfg.MaxConnectSize
	// Idle agents vastly outnumber busy ones; a small pending-write queue
	// keeps each one cheap.
	caps.MaximumClientWritesPending = 64
	// Agents use clean sessions; nothing needs to outlive a connection.
	caps.MaximumSessionExpiryInterval = 0
	caps.SharedSubAvailable = 0
	// Retained status describes state that can last for weeks unchanged;
	// mochi's default would drop every retained message after a day.
	caps.MaximumMessageExpiryInterval = 0
	caps.MaximumQos = 1
	caps.MaximumClients = int64(cfg.MaxClients)

	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// Small per-client buffers: agents are idle nearly always; the
		// WebSocket connection buffers a burst of input itself (from a pool,
		// only while there is some), and large packets are read straight
		// into their own slice.
		ClientNetReadBufferSize:  64,
		ClientNetWriteBufferSize: 1024,
		InlineClient:             true,
		Logger:                   log.With("component", "broker"),
	})
	if err := srv.AddHook(&accessHook{policy: cfg.Policy}, nil); err != nil {
		return nil, fmt.Errorf("broker: add access hook: %w", err)
	}
	for _, h := range cfg.Hooks {
		if h.Provides(mqtt.OnConnectAuthenticate) || h.Provides(mqtt.OnACLCheck) {
			return nil, fmt.Errorf("broker: hook %s answers access checks; only the policy may", h.ID())
		}
		if err := srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("broker: add hook %s: %w", h.ID(), err)
		}
	}
	b := &Broker{srv: srv, log: log}
	if err := srv.AddHook(new(keepAliveHook), nil); err != nil {
		return nil, fmt.Errorf("broker: add keep-alive hook: %w", err)
	}
	if err := srv.AddHook(&redirectHook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: add redirect hook: %w", err)
	}
	ws := newWSListener("ws", cfg)
	ws.pending.full = func(pending int) bool {
		return atomic.LoadInt64(&srv.Info.ClientsConnected)+int64(pending) >= int64(cfg.MaxClients)+BusyAnswers
	}
	if err := srv.AddListener(ws); err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", cfg.WSAddr, err)
	}
	control := srv.NewClient(nil, mqtt.LocalListener, "argus-control", true)
	control.Properties.ProtocolVersion = 5
	b.ws, b.control = ws, control
	return b, nil
}

// Start serves clients; it returns at once.
func (b *Broker) Start() error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	return nil
}

// Close disconnects every client and stops the listener.
func (b *Broker) Close() error {
	return b.srv.Close()
}

// WSAddr returns the address the WebSocket listener is bound to.
func (b *Broker) WSAddr() net.Addr { return b.ws.addr() }

// URL returns the broker's MQTT-over-WebSocket URL on its bound address.
func (b *Broker) URL() string {
	scheme := "ws"
	if b.ws.tls != nil {
		scheme = "wss"
	}
	return scheme + "://" + b.ws.addr().String() + b.ws.path
}

// Server returns the underlying mochi server, for the control plane's
// inline client.
func (b *Broker) Server() *mqtt.Server { return b.srv }

// Disconnect ends a client's connection with the given reason, if it is
// connected; it reports whether it was.
func (b *Broker) Disconnect(clientID string, code packets.Code) bool {
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok || cl.Closed() {
		return false
	}
	_ = b.srv.DisconnectClient(cl, code)
	return true
}

// DropSubscription removes one subscription of a client: mochi has no
// single call for it, so both the topic index and the client's own record
// are updated.
func (b *Broker) DropSubscription(clientID, filter string) {
	b.srv.Topics.Unsubscribe(filter, clientID)
	if cl, ok := b.srv.Clients.Get(clientID); ok {
		cl.State.Subscriptions.Delete(filter)
	}
}

// Publish sends a message from the control plane, with MQTT v5 properties
// (correlation data, user properties) when props is not nil.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte, props *packets.Properties) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     payload,
		// The broker never processes the inbound QoS of an in-process
		// publish, but a packet id must be valid.
		PacketID: uint16(qos),
	}
	if props != nil {
		pk.Properties = *props
	}
	return b.srv.InjectPacket(b.control, pk)
}

// Connected reports whether a client with this id is connected.
func (b *Broker) Connected(clientID string) bool {
	cl, ok := b.srv.Clients.Get(clientID)
	return ok && !cl.Closed()
}

// Redirect makes the broker answer every new connection with MQTT v5
// reason 0x9C (use another server) while on: a node that must not serve
// (fenced, draining) sends clients to the others.
func (b *Broker) Redirect(on bool) { b.redirect.Store(on) }

// Redirecting reports whether new connections are being sent elsewhere.
func (b *Broker) Redirecting() bool { return b.redirect.Load() }

// DisconnectAll ends every network client's connection with the given
// reason and reports how many there were; the control plane's own
// in-process client stays.
func (b *Broker) DisconnectAll(code packets.Code) int {
	return b.DisconnectPaced(context.Background(), code, 0, nil)
}

// DisconnectPaced is DisconnectAll at perSecond clients a second (all at
// once when perSecond is 0 or less), in batches a twentieth of a second
// apart: clients sent away all at once reconnect all at once, and the
// servers they go to time out handshakes they cannot take in. Before
// each batch after the first, ready (when not nil) is called with how
// many have been sent away so far, and the batch waits for it: the
// caller holds the pace to what the clients' next servers take in. It
// stops early, leaving the rest connected, when ctx ends.
func (b *Broker) DisconnectPaced(ctx context.Context, code packets.Code, perSecond int, ready func(ctx context.Context, sent int)) int {
	batch, every := pace(perSecond)
	n, inBatch := 0, 0
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Closed() || cl.Net.Inline {
			continue
		}
		if batch > 0 && inBatch == batch {
			select {
			case <-ctx.Done():
				return n
			case <-time.After(every):
			}
			if ready != nil {
				ready(ctx, n)
			}
			if ctx.Err() != nil {
				return n
			}
			inBatch = 0
		}
		_ = b.srv.DisconnectClient(cl, code)
		n++
		inBatch++
	}
	return n
}

// pace is the batch size and interval of perSecond clients a second; a
// batch of 0 means all at once.
func pace(perSecond int) (batch int, every time.Duration) {
	if perSecond <= 0 {
		return 0, 0
	}
	batch = max(1, perSecond/20)
	return batch, time.Second * time.Duration(batch) / time.Duration(perSecond)
}

// MaxKeepAlive is the longest keep-alive the broker grants, in seconds: a
// client asking for none or more is given this one (MQTT v5 Server Keep
// Alive). It is the agent's longest heartbeat. The keep-alive is the only
// check that a silent client is still there: broker sockets have no TCP
// keep-alive.
const MaxKeepAlive = 3600

// keepAliveHook bounds every client's keep-alive by MaxKeepAlive.
type keepAliveHook struct{ mqtt.HookBase }

func (*keepAliveHook) ID() string { return "argus-keepalive" }

func (*keepAliveHook) Provides(b byte) bool { return b == mqtt.OnConnect }

func (*keepAliveHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if cl.State.Keepalive == 0 || cl.State.Keepalive > MaxKeepAlive {
		cl.State.Keepalive = MaxKeepAlive
		cl.State.ServerKeepalive = true
	}
	return nil
}

// redirectHook refuses connections while the broker redirects them. It
// answers before authentication: a node that sends clients away need not
// know who they are.
type redirectHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *redirectHook) ID() string { return "argus-redirect" }

func (h *redirectHook) Provides(b byte) bool { return b == mqtt.OnConnect }

func (h *redirectHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if !h.b.redirect.Load() {
		return nil
	}
	code := packets.ErrUseAnotherServer
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable
	}
	_ = h.b.srv.SendConnack(cl, code, false, nil)
	return code
}
