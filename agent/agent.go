package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"

	"github.com/argus-remote/argus/internal/wsnet"
	"github.com/argus-remote/argus/topics"
)

// Version is the agent's version, set at build time.
var Version = "dev"

// Agent is a running agent.
type Agent struct {
	cfg Config
	st  State
	id  topics.AgentID
	// keys are the control-plane keys the agent accepts signatures from.
	keys *keyRing
	log  *slog.Logger

	started time.Time

	mu         sync.Mutex
	cm         *autopaho.ConnectionManager
	connected  bool
	sess       *session
	lastIssued time.Time
	killSwitch bool
	// unverified is the last activation no trusted key verified.
	unverified []byte
	// refusal is set while the broker refuses the agent's credentials.
	refusal *Refusal
	xfer    *transfer
	// inbox hands delivered messages to one worker, in order, so paho's
	// receive path never waits on what a message makes the agent do
	// (publishing an ack waits for the broker, which a disconnect stops).
	inbox chan *paho.Publish
	// running bounds the commands that run at once (see onCommand).
	running chan struct{}

	noStatus bool
	// noKillSwitchWatch: see DisableKillSwitchWatch.
	noKillSwitchWatch bool

	// patchMu serialises patch application.
	patchMu sync.Mutex
	// Events, when set, is told what the agent does (tests await on it).
	events chan<- Event
	// brokers are the URLs the agent connects to (brokers.go).
	brokers *brokers
}

// Event is something the agent did, for tests and local status.
type Event struct {
	Kind   string // "connected", "disconnected", "refused"
	Detail string
}

// New prepares an agent from its configuration and enrollment.
func New(cfg Config, st State, log *slog.Logger) (*Agent, error) {
	id, err := topics.ParseAgentID(st.AgentID)
	if err != nil {
		return nil, fmt.Errorf("agent id: %w", err)
	}
	keys, err := loadKeys(cfg.StateDir, st)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, st: st, id: id, keys: keys, log: log.With("agent", st.AgentID), started: time.Now(),
		running: make(chan struct{}, maxRunningCommands)}
	a.killSwitch = KillSwitchEngaged(cfg.StateDir)
	return a, nil
}

// Notify sends the agent's events to ch (non-blocking; full means dropped).
func (a *Agent) Notify(ch chan<- Event) { a.events = ch }

func (a *Agent) emit(kind, detail string) {
	if a.events == nil {
		return
	}
	select {
	case a.events <- Event{Kind: kind, Detail: detail}:
	default:
	}
}

// Run connects out to the broker and serves until ctx is done. It never
// listens on any port: the only connection is the one it dials.
func (a *Agent) Run(ctx context.Context) error {
	list := a.cfg.BrokerURLs
	if len(list) == 0 {
		list = []string{a.st.BrokerURL}
	}
	urls := make([]*url.URL, 0, len(list))
	for _, s := range list {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") {
			return fmt.Errorf("broker url %q: need ws:// or wss://", s)
		}
		urls = append(urls, u)
	}
	a.brokers = newBrokers(urls)
	tlsCfg, err := a.tlsConfig()
	if err != nil {
		return err
	}
	// A patch a crash interrupted is undone before anything else: the
	// agent does not come online over a half-patched tree.
	if err := a.recoverPatch(); err != nil {
		return err
	}
	if n := os.Getenv(TestCrashAfterSwapEnv); n != "" {
		a.log.Warn("TEST FAULT POINT ARMED: this agent kills itself in the middle of the next patch; it is for tests only", "env", TestCrashAfterSwapEnv, "after_swap", n)
	}
	cfg := autopaho.ClientConfig{
		// autopaho tries these in order at every (re)connect; dial maps
		// each to a URL of a round shuffled afresh (brokers.pick).
		ServerUrls: urls,
		TlsCfg:     tlsCfg,
		// As long as a heartbeat period, so the broker drops a dead link
		// within about one and a half of them (it waits 1.5 keep-alives).
		KeepAlive:                     keepAlive(a.cfg.HeartbeatInterval),
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         0,
		ConnectTimeout:                10 * time.Second,
		// Capped exponential back-off with jitter, so a fleet does not
		// reconnect in lock-step after a server restart.
		// Once the broker has refused the agent's credentials several
		// times in a row, minutes apart instead (see reconnectBackoff).
		ReconnectBackoff: a.reconnectBackoff(autopaho.NewExponentialBackoff(250*time.Millisecond, a.cfg.ReconnectMax, 500*time.Millisecond, 2)),
		ConnectUsername:  a.st.AgentID,
		ConnectPassword:  []byte(a.st.Secret),
		// Every connection starts clean: a resumed session could carry
		// subscriptions the broker would not grant today.
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			c.CleanStart = true
			// The broker sends no more unacknowledged publishes than the
			// inbox holds. Unset, the limit is 65,535, and paho makes a
			// queue of that many pointers for each connection: 512 KiB
			// that the collector scans at every cycle.
			if c.Properties == nil {
				// As paho's own: a CONNECT saying "no problem information"
				// gets its PUBLISHes from mochi without user properties,
				// and a command's trace context rides in them.
				c.Properties = &paho.ConnectProperties{RequestProblemInfo: true}
			}
			rm := uint16(inboxSize)
			c.Properties.ReceiveMaximum = &rm
			return c, nil
		},
		AttemptConnection: a.dial,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go a.onUp(ctx, cm)
		},
		OnConnectionDown: func() bool {
			a.setConnected(false)
			a.log.Warn("disconnected from broker; reconnecting")
			a.emit("disconnected", "")
			return true
		},
		OnConnectError: func(err error) {
			u := a.brokers.dialled()
			var ce *autopaho.ConnackError
			if errors.As(err, &ce) && credentialsRefused(ce.ReasonCode) {
				a.onRefused(u, ce)
				return
			}
			if errors.As(err, &ce) && useAnotherServer(ce.ReasonCode) {
				// A node that drains or has lost its place in the cluster:
				// autopaho goes on to the next URL at once.
				a.brokers.avoid(u)
				a.log.Info("broker sent this agent to another server; trying the next", "url", u.Redacted(), "reason", fmt.Sprintf("0x%02X", ce.ReasonCode))
				a.emit("moved_on", u.Redacted())
				return
			}
			// autopaho's message names its slot, not the URL dialled.
			if inner := errors.Unwrap(err); inner != nil {
				err = inner
			}
			a.log.Warn("cannot connect to broker", "url", u.Redacted(), "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: a.st.AgentID,
			// What broke the link, for the log: autopaho's own callback
			// that follows does not say.
			OnClientError: func(err error) {
				a.log.Warn("broker connection lost", "err", err)
			},
			// The reconnect that follows takes the shortest back-off and
			// tries the other URLs first.
			OnServerDisconnect: func(d *paho.Disconnect) {
				if useAnotherServer(d.ReasonCode) {
					u := a.brokers.dialled()
					a.brokers.avoid(u)
					a.log.Info("broker asked this agent to use another server", "url", u.Redacted(), "reason", fmt.Sprintf("0x%02X", d.ReasonCode))
				}
			},
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					// Activation states are never dropped (they may end a
					// session); a command that finds the queue full is, and
					// times out at the server.
					if _, kind, ok := topics.ParseAgentTopic(pr.Packet.Topic); ok && kind == topics.Activation {
						select {
						case a.inbox <- pr.Packet:
						case <-ctx.Done():
						}
						return true, nil
					}
					select {
					case a.inbox <- pr.Packet:
					default:
						a.log.Warn("inbox full; command dropped", "topic", pr.Packet.Topic)
					}
					return true, nil
				},
			},
		},
	}
	a.inbox = make(chan *paho.Publish, inboxSize)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-a.inbox:
				a.onPublish(ctx, p)
			}
		}
	}()
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		return fmt.Errorf("broker connection: %w", err)
	}
	a.mu.Lock()
	a.cm = cm
	a.writeStatusLocked()
	a.mu.Unlock()
	a.log.Info("agent started; dormant until a signed activation", "brokers", len(urls), "version", Version, "kill_switch", a.killSwitch)
	if !a.noKillSwitchWatch {
		go a.watchKillSwitch(ctx)
	}

	tick := time.NewTicker(a.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.mu.Lock()
			a.endSessionLocked("agent stopping")
			a.connected = false
			a.writeStatusLocked()
			a.mu.Unlock()
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = cm.Disconnect(dctx)
			cancel()
			<-cm.Done()
			return nil
		case <-tick.C:
			a.heartbeat(ctx)
		}
	}
}

// inboxSize is how many delivered messages wait for the agent's worker,
// and so how many unacknowledged publishes the broker may send it (the
// CONNECT's Receive Maximum).
const inboxSize = 256

// After refusalsBeforeLongBackoff refusals of its credentials in a row, the
// agent waits between refusedBackoffMin and refusedBackoffMax before each
// attempt: a revoked agent cannot get in by trying, and a fleet of them
// should not keep hammering the broker. It keeps trying (rather than
// exiting) so an agent the broker refused because it could not check the
// credential at that moment comes back by itself.
const (
	refusalsBeforeLongBackoff = 3
	refusedBackoffMin         = 5 * time.Minute
	refusedBackoffMax         = 10 * time.Minute
)

// Refusal is the broker refusing this agent's credentials: its enrollment
// was revoked, or was never valid there.
type Refusal struct {
	Since       time.Time `json:"since"`
	Attempts    int       `json:"attempts"`
	Reason      string    `json:"reason"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// useAnotherServer is whether a reason code sends the agent elsewhere
// (MQTT v5: 0x9C use another server, 0x9D server moved).
func useAnotherServer(code byte) bool { return code == 0x9C || code == 0x9D }

// credentialsRefused is whether a CONNACK reason code refuses the agent's
// identity (MQTT v5: 0x86 bad user name or password, 0x87 not authorized,
// 0x8A banned) rather than saying the server is busy or away.
func credentialsRefused(code byte) bool {
	return code == 0x86 || code == 0x87 || code == 0x8A
}

func connackReason(ce *autopaho.ConnackError) string {
	text := map[byte]string{0x86: "bad username or password", 0x87: "not authorized", 0x8A: "banned"}[ce.ReasonCode]
	if ce.Reason != "" && ce.Reason != text {
		text += ": " + ce.Reason
	}
	return fmt.Sprintf("CONNACK 0x%02X %s", ce.ReasonCode, text)
}

func (a *Agent) onRefused(u *url.URL, ce *autopaho.ConnackError) {
	reason := connackReason(ce)
	a.mu.Lock()
	if a.refusal == nil {
		a.refusal = &Refusal{Since: time.Now().UTC()}
	}
	a.refusal.Attempts++
	a.refusal.Reason = reason
	n := a.refusal.Attempts
	a.writeStatusLocked()
	a.mu.Unlock()
	a.log.Error("cannot connect to broker: it refused this agent's credentials: enrollment refused or revoked",
		"url", u.Redacted(), "reason", reason, "attempts", n)
	if n == refusalsBeforeLongBackoff {
		a.log.Error(fmt.Sprintf("enrollment refused or revoked %d times in a row: retrying every 5-10 minutes; if this agent was revoked, enroll it again with a new token (argus-agent enroll)", n),
			"state_dir", a.cfg.StateDir)
	}
	a.emit("credentials_refused", reason)
}

// reconnectBackoff waits as normal does until the broker has refused the
// agent's credentials refusalsBeforeLongBackoff times in a row, then 5 to
// 10 minutes before each attempt, and records when the next one is due.
func (a *Agent) reconnectBackoff(normal autopaho.Backoff) autopaho.Backoff {
	return func(attempt int) time.Duration {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.refusal == nil || a.refusal.Attempts < refusalsBeforeLongBackoff {
			return normal(attempt)
		}
		d := refusedBackoffMin + rand.N(refusedBackoffMax-refusedBackoffMin)
		a.refusal.NextAttempt = time.Now().Add(d).UTC()
		a.writeStatusLocked()
		return d
	}
}

// writeBuffers lend WebSocket write buffers to connections only while
// they write.
var writeBuffers sync.Pool

// dial opens the WebSocket to the broker, from LocalAddr when one is set.
// The connection sends each MQTT packet as one WebSocket message
// (wsnet.Conn); autopaho's own would send each of the pieces paho writes
// a packet in as a message, and a system call, of its own.
func (a *Agent) dial(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	if cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
	}
	nd := a.netDialer()
	d := websocket.Dialer{
		NetDialContext: nd.DialContext, Proxy: http.ProxyFromEnvironment, TLSClientConfig: cfg.TlsCfg,
		Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second,
		ReadBufferSize: 1024, WriteBufferPool: &writeBuffers,
	}
	u = a.brokers.pick(u)
	ws, _, err := d.DialContext(ctx, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("websocket connection failed: %w", err)
	}
	return wsnet.NewConn(ws), nil
}

// netDialer dials the broker's TCP connections. They have no TCP
// keep-alive: the MQTT keep-alive (the heartbeat interval) checks the
// link, and the broker's sockets have none either (see broker.MaxKeepAlive).
func (a *Agent) netDialer() *net.Dialer {
	nd := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	if a.cfg.LocalAddr != "" {
		nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(a.cfg.LocalAddr)}
	}
	return nd
}

func (a *Agent) tlsConfig() (*tls.Config, error) {
	if a.cfg.CAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(a.cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("ca-file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca-file %s: no PEM certificate", a.cfg.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func (a *Agent) setConnected(up bool) {
	a.mu.Lock()
	a.connected = up
	a.writeStatusLocked()
	a.mu.Unlock()
}

// conn returns the connection manager while connected.
func (a *Agent) conn() *autopaho.ConnectionManager {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.connected {
		return nil
	}
	return a.cm
}

func (a *Agent) onUp(ctx context.Context, cm *autopaho.ConnectionManager) {
	a.mu.Lock()
	wasRefused := a.refusal != nil
	a.refusal = nil
	a.mu.Unlock()
	a.setConnected(true)
	u := a.brokers.dialled()
	if wasRefused {
		a.log.Info("connected to broker; it accepts this agent's credentials again", "url", u.Redacted())
	} else {
		a.log.Info("connected to broker", "url", u.Redacted())
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: a.id.Topic(topics.Activation), QoS: 1},
	}}); err != nil {
		a.log.Error("subscribe to activation", "err", err)
	}
	a.publish(sctx, topics.Manifest, a.manifest(), 1)
	a.heartbeat(sctx)
	a.emit("connected", "")
}

func (a *Agent) manifest() topics.ManifestMsg {
	host, _ := os.Hostname()
	return topics.ManifestMsg{
		V: topics.Version, AgentID: a.st.AgentID, AgentVersion: Version,
		OS: runtime.GOOS, Arch: runtime.GOARCH, Hostname: host,
		Commands: SupportedCommands, LogFiles: sortedNames(a.cfg.LogFiles), ReadableRoots: nonNil(a.cfg.ReadableRoots), Cameras: sortedNames(a.cfg.Cameras),
		Time: time.Now().UTC(),
	}
}

func (a *Agent) heartbeat(ctx context.Context) {
	a.mu.Lock()
	state, sid := a.stateLocked()
	ks := a.killSwitch
	a.mu.Unlock()
	newest, oldest := a.keys.trusted()
	a.publish(ctx, topics.Heartbeat, topics.HeartbeatMsg{
		V: topics.Version, AgentID: a.st.AgentID, Version: Version, State: state, SessionID: sid, KillSwitch: ks,
		Interval: int(a.cfg.HeartbeatInterval / time.Second), SigningKey: newest, OldestKey: oldest, Time: time.Now().UTC(),
	}, 0)
}

// keepAlive is the MQTT keep-alive, in whole seconds, for a heartbeat
// period.
func keepAlive(heartbeat time.Duration) uint16 {
	s := heartbeat / time.Second
	return uint16(min(max(s, 1), 65535))
}

// publish sends v on one of the agent's own topics; while disconnected the
// message is dropped (heartbeats and manifests are resent on reconnect).
func (a *Agent) publish(ctx context.Context, k topics.Kind, v any, qos byte) {
	cm := a.conn()
	if cm == nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		a.log.Error("encode message", "topic", k, "err", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cm.Publish(pctx, &paho.Publish{Topic: a.id.Topic(k), QoS: qos, Payload: b}); err != nil && !errors.Is(err, context.Canceled) {
		a.log.Warn("publish", "topic", k, "err", err)
	}
}

// onPublish handles everything the broker delivers. Only the agent's own
// activation and commands topics mean anything; the rest is ignored.
func (a *Agent) onPublish(ctx context.Context, p *paho.Publish) {
	id, kind, ok := topics.ParseAgentTopic(p.Topic)
	if !ok || id != a.id {
		a.log.Warn("ignoring message on a foreign topic", "topic", p.Topic)
		return
	}
	switch kind {
	case topics.Activation:
		a.onActivation(ctx, p.Payload)
	case topics.Commands:
		a.onCommand(ctx, p)
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
