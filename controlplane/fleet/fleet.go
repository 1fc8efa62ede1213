// Package fleet watches the agents on this node's broker: which are
// connected (the broker's connect and disconnect hooks are the truth),
// what their heartbeats and manifests say, their retained status topics,
// and the ACL refusals they run into.
//
// Broker hooks run in the broker's goroutines, so this package only
// queues work there; one worker writes to the database, in order.
package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/broker/acl"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/topics"
)

// tracer is looked up at each use: a provider installed later (a second
// server in one test process) must be the one that records.
func tracer() trace.Tracer { return otel.Tracer("argus/fleet") }

const (
	flushEvery = 2 * time.Second
	// denialAuditEvery bounds audit rows for ACL refusals: at most one per
	// client per interval, carrying the count of those suppressed.
	denialAuditEvery = time.Minute
	queueSize        = 4096
	// writers is how many goroutines write the hooks' work to the
	// database. An agent's work always goes to the same one, so it is
	// written in the order it came; different agents' is written side by
	// side, a node taking in thousands of agents at once waiting on as
	// many round trips at a time.
	writers = 4
	// goneMax bounds the departures kept; past it, those older than
	// goneFor are dropped.
	goneMax = 10_000
	goneFor = 5 * time.Minute
	// defaultHeartbeat is an agent's heartbeat period until it says its own.
	defaultHeartbeat = 30 * time.Second
	staleEvery       = time.Second
)

// Tenants resolves an agent's tenant (the ACL policy caches it).
type Tenants interface {
	Tenant(agentID string) (string, bool)
}

// Watcher tracks agents on one node.
type Watcher struct {
	store   *agents.Store
	pool    *pgxpool.Pool
	srv     *mqtt.Server
	tenants Tenants
	node    string
	log     *slog.Logger

	mu     sync.Mutex
	online map[string]*conn
	gone   departures // when each agent last left, while it is away
	seen   map[string]agents.Heartbeat
	denied *denials

	queues  [writers]chan func(context.Context)
	stop    chan struct{}
	stopped chan struct{}
	writing sync.WaitGroup
	// running says Start got as far as its workers: a start that failed
	// before has nothing for Stop to wait for.
	running bool

	// OnConnect, when set before Start, runs after an agent connects (in
	// the broker's goroutine; it must not block).
	OnConnect func(agentID string)
	// OnDisconnect, likewise, runs after an agent's connection is gone.
	OnDisconnect func(agentID string)
	// OnStale, likewise, runs when an agent becomes stale or is heard
	// from again.
	OnStale func(agentID string, stale bool)
	// OnPresent, when set before Start, runs once an agent's connection
	// is recorded in the database (in the database worker; it must not
	// block), with the node that held the agent until then ("" when
	// unknown: no row was left, or the write failed).
	OnPresent func(agentID, prevNode string)

	// handover: see Handover.
	handover atomic.Bool
	// fenced: see SetFenced.
	fenced atomic.Bool
}

type conn struct {
	cl          *mqtt.Client
	tenant      string
	connectedAt time.Time
	// epoch is the connection's presence epoch, set and read only by the
	// database worker (the connect's write runs before the disconnect's).
	epoch *int64
	// tried is set, by the database worker under mu, once the connect's
	// write has run (whether or not it succeeded).
	tried bool
	// lastBeat is the last heartbeat (or the connect); two heartbeat
	// periods (interval) without one make the agent stale.
	lastBeat   time.Time
	interval   time.Duration
	stale      bool
	version    string
	state      string
	sessionID  string
	killSwitch bool
}

// New returns a Watcher; Start it once the broker exists.
func New(store *agents.Store, pool *pgxpool.Pool, tenants Tenants, node string, log *slog.Logger) *Watcher {
	w := &Watcher{
		store: store, pool: pool, tenants: tenants, node: node, log: log,
		online: map[string]*conn{}, gone: newDepartures(), seen: map[string]agents.Heartbeat{}, denied: newDenials(),
		stop: make(chan struct{}), stopped: make(chan struct{}),
	}
	for i := range w.queues {
		w.queues[i] = make(chan func(context.Context), queueSize/writers)
	}
	return w
}

// Start clears this node's stale presence, subscribes to the agents'
// heartbeat and manifest topics through the inline client, and starts the
// database worker.
func (w *Watcher) Start(ctx context.Context, srv *mqtt.Server) error {
	w.srv = srv
	if err := w.store.ClearNode(ctx, w.node); err != nil {
		return err
	}
	if err := srv.Subscribe(topics.AgentFilter(topics.Heartbeat), 1, w.onHeartbeat); err != nil {
		return err
	}
	if err := srv.Subscribe(topics.AgentFilter(topics.Manifest), 2, w.onManifest); err != nil {
		return err
	}
	for _, q := range w.queues {
		w.writing.Add(1)
		go w.write(q)
	}
	w.running = true
	go w.work()
	return nil
}

// Stop drains queued writes and stops the worker. Call it after the broker
// has closed, so the last disconnects are recorded.
func (w *Watcher) Stop() {
	if !w.running {
		return
	}
	close(w.stop)
	<-w.stopped
	if w.handover.Load() {
		// What no other node has taken over by now is gone.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.store.ClearNode(ctx, w.node); err != nil {
			w.log.Warn("clear this node's presence", "err", err)
		}
	}
}

// Handover makes the disconnects from now on leave the agents' presence
// rows in place, for the node each agent reconnects to to replace: that
// node then knows where the agent came from (agent.moved). A draining
// node calls it before it sends its agents away; Stop clears what is
// left.
func (w *Watcher) Handover() { w.handover.Store(true) }

// handoverPoll is how often AwaitHandedOver reads the presence rows.
const handoverPoll = 100 * time.Millisecond

// AwaitHandedOver waits, after Handover and the agents' disconnects,
// until no presence row names this node any more (every agent it held
// has been recorded on another node) or ctx is done, and returns how
// many were left. Another node's write is only seen by asking.
func (w *Watcher) AwaitHandedOver(ctx context.Context) int {
	t := time.NewTicker(handoverPoll)
	defer t.Stop()
	for {
		n, err := w.store.HeldBy(ctx, w.node)
		if err == nil && n == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return n
		case <-t.C:
		}
	}
}

// HandoverWindow is how many agents a draining node has sent away and no
// other node has yet recorded, at most, before it sends more: the others
// take agents in as fast as they can write them down, and an agent kept
// waiting behind thousands of others there is a session's command kept
// waiting with it.
const HandoverWindow = 1000

// AwaitRoom waits, during a handover, until fewer than HandoverWindow of
// the sent agents are still recorded here: held is how many rows named
// this node as the handover began, sent how many agents have been sent
// away since. It reports false if ctx ended first; when the rows cannot
// be read it does not wait.
func (w *Watcher) AwaitRoom(ctx context.Context, held, sent int) bool {
	t := time.NewTicker(handoverPoll)
	defer t.Stop()
	for {
		n, err := w.store.HeldBy(ctx, w.node)
		if err != nil && ctx.Err() == nil || err == nil && sent-(held-n) < HandoverWindow {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// HeldHere is how many presence rows name this node.
func (w *Watcher) HeldHere(ctx context.Context) (int, error) { return w.store.HeldBy(ctx, w.node) }

// Online reports whether the agent is connected to this node now.
func (w *Watcher) Online(agentID string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.online[agentID]
	return ok
}

// GoneSince is when the agent last disconnected from this node, while it
// is away (for a while: entries older than a few minutes may be dropped).
func (w *Watcher) GoneSince(agentID string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gone.since(agentID)
}

// OnlineCount is how many agents are connected here.
func (w *Watcher) OnlineCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.online)
}

// KillSwitch reports whether the agent's last heartbeat said its kill
// switch is engaged.
func (w *Watcher) KillSwitch(agentID string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.online[agentID]
	return ok && c.killSwitch
}

// Hook returns the broker hook that feeds the watcher.
func (w *Watcher) Hook() mqtt.Hook { return &hook{w: w} }

// OnDeny is the ACL policy's refusal callback: it queues an audit row,
// at most one per client per minute.
func (w *Watcher) OnDeny(d acl.Denial) {
	w.mu.Lock()
	audited, suppressed := w.denied.admit(d.ClientID, time.Now())
	w.mu.Unlock()
	if !audited {
		return
	}

	tenant := ""
	if d.AgentID != "" {
		tenant, _ = w.tenants.Tenant(d.AgentID)
	}
	op := "subscribe_or_deliver"
	if d.Write {
		op = "publish"
	}
	w.enqueue(d.ClientID, func(ctx context.Context) {
		actor := "mqtt-client:" + d.ClientID
		if d.AgentID != "" {
			actor = "agent:" + d.AgentID
		}
		detail := map[string]any{"topic": truncate(d.Topic, 256), "operation": op, "suppressed_before": suppressed, "node": w.node}
		if d.Why != "" {
			detail["why"] = d.Why
		}
		err := audit.Write(ctx, w.pool, audit.Entry{
			Actor: actor, Action: "broker.acl_denied", Outcome: audit.Denied,
			AgentID: d.AgentID, TenantID: tenant, Detail: detail,
		})
		if err != nil {
			w.log.Error("audit ACL denial", "err", err)
		}
	})
}

// enqueue hands work about key (an agent's or a client's id) to its
// writer. It blocks when that writer's queue is full rather than lose a
// presence change.
func (w *Watcher) enqueue(key string, f func(context.Context)) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	select {
	case w.queues[h.Sum32()%writers] <- f:
	case <-w.stop:
	}
}

// write runs the work queued on q, and what is left of it at Stop.
func (w *Watcher) write(q chan func(context.Context)) {
	defer w.writing.Done()
	ctx := context.Background()
	for {
		select {
		case f := <-q:
			w.traced(ctx, f)
		case <-w.stop:
			for {
				select {
				case f := <-q:
					f(ctx)
				default:
					return
				}
			}
		}
	}
}

func (w *Watcher) work() {
	defer close(w.stopped)
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	staleTick := time.NewTicker(staleEvery)
	defer staleTick.Stop()
	presenceTick := time.NewTicker(presenceCheckEvery)
	defer presenceTick.Stop()
	ctx := context.Background()
	for {
		select {
		case now := <-staleTick.C:
			w.markStale(now)
		case <-tick.C:
			w.flushSeen(ctx)
		case <-presenceTick.C:
			w.checkPresence(ctx)
		case <-w.stop:
			w.writing.Wait()
			w.flushSeen(ctx)
			return
		}
	}
}

// traced runs one piece of queued database work under a span: these are
// the broker hooks' writes.
func (w *Watcher) traced(ctx context.Context, f func(context.Context)) {
	ctx, span := tracer().Start(ctx, "broker.hook.store")
	defer span.End()
	f(ctx)
}

func (w *Watcher) flushSeen(ctx context.Context) {
	w.mu.Lock()
	seen := w.seen
	w.seen = map[string]agents.Heartbeat{}
	w.mu.Unlock()
	if err := w.store.Seen(ctx, seen); err != nil {
		w.log.Error("record heartbeats", "err", err)
	}
}

func (w *Watcher) connected(cl *mqtt.Client) {
	id, err := topics.ParseAgentID(cl.ID)
	if err != nil {
		return
	}
	tenant, _ := w.tenants.Tenant(cl.ID)
	now := time.Now().UTC().Truncate(time.Microsecond)
	c := &conn{cl: cl, tenant: tenant, connectedAt: now, epoch: new(int64), lastBeat: now, interval: defaultHeartbeat, state: topics.StateDormant}
	w.mu.Lock()
	w.online[cl.ID] = c
	w.gone.back(cl.ID)
	snap := *c
	w.mu.Unlock()
	remote := cl.Net.Remote
	w.enqueue(cl.ID, func(ctx context.Context) {
		epoch, prev, _, err := w.store.ConnectedFrom(ctx, cl.ID, w.node, remote, c.connectedAt)
		// Under the lock: the presence check, on another goroutine, reads
		// the epoch of a connection it sees tried.
		w.mu.Lock()
		c.tried = true
		if err == nil {
			*c.epoch = epoch
		}
		w.mu.Unlock()
		if err != nil {
			w.log.Error("record agent connect", "agent", cl.ID, "err", err)
		}
		if w.OnPresent != nil {
			w.OnPresent(cl.ID, prev.NodeID)
		}
	})
	w.publishStatus(id, &snap, true)
	w.log.Info("agent connected", "agent", cl.ID, "remote", remote)
	if w.OnConnect != nil {
		w.OnConnect(cl.ID)
	}
}

func (w *Watcher) disconnected(cl *mqtt.Client, cause error) {
	id, err := topics.ParseAgentID(cl.ID)
	if err != nil {
		return
	}
	w.mu.Lock()
	c, ok := w.online[cl.ID]
	// A newer connection of the same agent has taken over: it is still online.
	if !ok || c.cl != cl {
		w.mu.Unlock()
		return
	}
	delete(w.online, cl.ID)
	at := time.Now().UTC()
	w.gone.left(cl.ID, at)
	snap := *c
	w.mu.Unlock()
	if w.OnDisconnect != nil {
		w.OnDisconnect(cl.ID)
	}
	handover := w.handover.Load()
	w.enqueue(cl.ID, func(ctx context.Context) {
		w.mu.Lock()
		epoch := *c.epoch // the presence check may have recorded it late
		w.mu.Unlock()
		if epoch == 0 {
			return // its connect was never recorded
		}
		if handover {
			return // the next node replaces the row (see Handover)
		}
		if err := w.store.Disconnected(ctx, cl.ID, epoch, at); err != nil {
			w.log.Error("record agent disconnect", "agent", cl.ID, "err", err)
		}
	})
	w.publishStatus(id, &snap, false)
	w.log.Info("agent disconnected", "agent", cl.ID, "cause", disconnectCause(cause))
}

func (w *Watcher) publishStatus(id topics.AgentID, c *conn, online bool) {
	msg := topics.AgentStatusMsg{
		V: topics.Version, AgentID: id.String(), TenantID: c.tenant, Online: online,
		Version: c.version, State: c.state, SessionID: c.sessionID, Stale: online && c.stale, Time: time.Now().UTC(),
	}
	if online {
		msg.LastSeen = msg.Time
	}
	b, _ := json.Marshal(msg)
	if err := w.srv.Publish(id.Status(), b, true, 0); err != nil {
		w.log.Error("publish agent status", "agent", id.String(), "err", err)
	}
}

// onHeartbeat runs for heartbeats. The cl mochi passes to inline handlers
// is the inline client; the publisher is pk.Origin, and the ACL already
// lets a client publish only on its own topics.
func (w *Watcher) onHeartbeat(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
	id, kind, ok := topics.ParseAgentTopic(pk.TopicName)
	if !ok || kind != topics.Heartbeat || pk.Origin != id.String() {
		return
	}
	var hb topics.HeartbeatMsg
	if err := topics.Decode(pk.Payload, topics.MaxEnvelope, &hb); err != nil || hb.AgentID != id.String() {
		return
	}
	w.mu.Lock()
	w.seen[id.String()] = agents.Heartbeat{At: time.Now().UTC(), Version: truncate(hb.Version, 64)}
	c := w.online[id.String()]
	changed := c != nil && (c.version != hb.Version || c.state != hb.State || c.sessionID != hb.SessionID || c.killSwitch != hb.KillSwitch || c.stale)
	fresh := c != nil && c.stale
	var snap conn
	if c != nil {
		c.lastBeat = time.Now().UTC()
		c.interval = defaultHeartbeat
		if hb.Interval > 0 && hb.Interval <= 3600 {
			c.interval = time.Duration(hb.Interval) * time.Second
		}
	}
	if changed {
		c.version, c.state, c.sessionID, c.killSwitch, c.stale = truncate(hb.Version, 64), hb.State, hb.SessionID, hb.KillSwitch, false
		snap = *c
	}
	w.mu.Unlock()
	if changed {
		w.publishStatus(id, &snap, true)
	}
	if fresh {
		w.log.Info("agent heard from again", "agent", id.String())
		if w.OnStale != nil {
			w.OnStale(id.String(), false)
		}
	}
}

// markStale makes stale every agent connected here that has missed two
// heartbeats, and says so on its status topic.
func (w *Watcher) markStale(now time.Time) {
	var stale []conn
	w.mu.Lock()
	for _, c := range w.online {
		if !c.stale && now.Sub(c.lastBeat) > 2*c.interval {
			c.stale = true
			stale = append(stale, *c)
		}
	}
	w.mu.Unlock()
	for _, c := range stale {
		id, err := topics.ParseAgentID(c.cl.ID)
		if err != nil {
			continue
		}
		w.log.Warn("agent stale: connected, but its heartbeats have stopped", "agent", c.cl.ID, "last_heartbeat", c.lastBeat)
		w.publishStatus(id, &c, true)
		if w.OnStale != nil {
			w.OnStale(c.cl.ID, true)
		}
	}
}

// Stale reports whether the agent is connected here but has missed two
// heartbeats, and when it was last heard from.
func (w *Watcher) Stale(agentID string) (bool, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.online[agentID]
	if !ok {
		return false, time.Time{}
	}
	return c.stale, c.lastBeat
}

func (w *Watcher) onManifest(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
	id, kind, ok := topics.ParseAgentTopic(pk.TopicName)
	if !ok || kind != topics.Manifest || pk.Origin != id.String() {
		return
	}
	var m topics.ManifestMsg
	if err := topics.Decode(pk.Payload, topics.MaxEnvelope, &m); err != nil || m.AgentID != id.String() {
		w.log.Warn("malformed manifest", "agent", id.String(), "err", err)
		return
	}
	payload := bytes.Clone(pk.Payload)
	w.enqueue(id.String(), func(ctx context.Context) {
		if err := w.store.SetManifest(ctx, id.String(), payload, truncate(m.AgentVersion, 64)); err != nil {
			w.log.Error("store manifest", "agent", id.String(), "err", err)
		}
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// hook feeds broker connect and disconnect events to the watcher.
type hook struct {
	mqtt.HookBase
	w *Watcher
}

func (h *hook) ID() string { return "argus-fleet" }

func (h *hook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) { h.w.connected(cl) }

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) { h.w.disconnected(cl, err) }

// disconnectCause names what ended a connection, for the log: the
// client's DISCONNECT reason or the read or write error mochi saw.
func disconnectCause(err error) string {
	if err == nil {
		return "none given"
	}
	return err.Error()
}
