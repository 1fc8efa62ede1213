package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"

	"github.com/argus-remote/argus/topics"
)

// Status subjects: every retained status message a node publishes goes
// to the others on statusSubject; a joining node asks on helloSubject
// for what the others hold, and they answer on its snapshot subject.
const (
	statusSubject = "status"
	helloSubject  = "hello"
	// digestSubject carries each node's digest of one share of its own
	// word (the re-sync); a node whose copy differs asks for the share on
	// the sender's resyncSubject, and it comes on the asker's snapshot
	// subject.
	digestSubject = "digest"
	resyncSubject = "resync"
	// maxShares bounds the shares a digest may name.
	maxShares = 1 << 16
	// mirroredKey marks, on the inline publish that applies it, a status
	// message that came from another node: it is not sent on again. The
	// mark is taken off before the broker stores or delivers it.
	mirroredKey = "argus-mirrored"
	// maxBatch bounds one status message between nodes; a snapshot is
	// sent in as many as it takes.
	maxBatch = 256 << 10
	// maxStatusMsg bounds what a node accepts from another in one message.
	maxStatusMsg = 4 << 20
)

// Retainer is the broker the mirror publishes retained messages on.
type Retainer interface {
	Publish(topic string, payload []byte, retain bool, qos byte, props *packets.Properties) error
}

// StatusItem is one retained status message, as it travels between nodes.
type StatusItem struct {
	// Origin is the node that published it (a snapshot passes on what
	// other nodes published).
	Origin  string          `json:"origin,omitempty"`
	Topic   string          `json:"topic"`
	QoS     byte            `json:"qos"`
	Payload json.RawMessage `json:"payload"`
}

// statusBatch is what goes on the wire: items from one node.
type statusBatch struct {
	From  string       `json:"from"`
	Items []StatusItem `json:"items"`
}

// held is the newest message of one topic this node knows of.
type held struct {
	item   StatusItem
	origin string
	at     time.Time
	// seen is when this node came to hold it.
	seen time.Time
	// repaired is this node's guess that the agent left a node that
	// died or restarted, not the holder's word.
	repaired bool
	// online is an agent status's connection state: a connection's end,
	// said late by the node it left, must not hide the agent's newer
	// connection to another node.
	online bool
	// place and sum, the hashes of the topic and of topic and payload,
	// are the re-sync's: which share the topic is in, and what the
	// message adds to its digest. Set as it is stored.
	place uint32
	sum   uint64
	// feed is a command feed's entries as stored, newest first: what the
	// next feed of its tenant is merged against, without reading this
	// one again.
	feed []feedKey
}

// feedKey is what a feed's merge matches and orders its entries by.
type feedKey struct {
	id string
	at time.Time
}

// StatusMirror makes every node's broker hold every retained status
// message (agents', tenants' indicators and command feeds), wherever it
// was published, so that a monitor or a tenant viewer may connect to any
// node. Each node sends the others what it publishes; the others keep
// the newer of what they hold and what they receive (by the time the
// message carries; a tenant's command feed is the union of every node's).
// The server summary is not mirrored: each node derives it from the
// database.
type StatusMirror struct {
	node string
	pub  Retainer
	log  *slog.Logger

	// mu serialises every decision and the retain that follows it, so an
	// older message can never be stored after a newer one.
	mu   sync.Mutex
	held map[string]*held
	wire *Wire
	// The re-sync's digests, kept up to date as messages are stored, so
	// that answering one costs a lookup, not a scan of every message held
	// (a node holds every agent's of the cluster): the count and sum of
	// each origin's share of aggShares, feeds left out, and the topics of
	// the feeds (one per tenant), which a digest lists.
	aggShares int
	agg       map[shareOf]shareDigest
	feeds     map[string]bool
	// online counts, by origin, the agents held said online there: the
	// repair scans for a dead node's only when one of them is counted.
	online map[string]int

	// ResyncEvery, set before Run, is the period over which this node
	// has the others check their copy of every message it holds as its
	// own last word (a share each tick of Run: see resend), so that one
	// lost on the way is put right within it. Zero: never.
	ResyncEvery time.Duration
	// DropLive, set before the broker starts (tests of the re-sync),
	// loses every status message this node sends the others as it
	// publishes it; snapshots and re-syncs still go.
	DropLive bool
}

// NewStatusMirror returns the mirror of node's retained status, which
// publishes on pub. Register its Hook with the broker, then Attach it
// to the wire.
func NewStatusMirror(node string, pub Retainer, log *slog.Logger) *StatusMirror {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &StatusMirror{node: node, pub: pub, log: log, held: map[string]*held{}}
}

// SetPublisher sets the broker the mirror publishes on, when it exists
// only after the mirror (whose hook the broker needs).
func (m *StatusMirror) SetPublisher(pub Retainer) {
	m.mu.Lock()
	m.pub = pub
	m.mu.Unlock()
}

// mirrored reports whether topic is one the mirror keeps the same on
// every node.
func mirrored(topic string) bool {
	return strings.HasPrefix(topic, topics.StatusRoot) && topic != topics.ServerStatus
}

// Hook returns the broker hook that sees the node's own retained status
// publishes.
func (m *StatusMirror) Hook() mqtt.Hook { return &statusHook{m: m} }

type statusHook struct {
	mqtt.HookBase
	m *StatusMirror
}

func (h *statusHook) ID() string { return "argus-status-mirror" }

func (h *statusHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish takes the control plane's retained status publishes: the
// mirror stores (and sends on) the newest itself, under its lock, so the
// publish as made is dropped here. Its own re-publish, marked, passes
// with the mark removed.
func (h *statusHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline || !pk.FixedHeader.Retain || len(pk.Payload) == 0 || !mirrored(pk.TopicName) {
		return pk, nil
	}
	if i := slices.IndexFunc(pk.Properties.User, func(u packets.UserProperty) bool { return u.Key == mirroredKey }); i >= 0 {
		pk.Properties.User = slices.Delete(slices.Clone(pk.Properties.User), i, i+1)
		return pk, nil
	}
	h.m.offer(h.m.node, StatusItem{Topic: pk.TopicName, QoS: pk.FixedHeader.Qos, Payload: bytes.Clone(pk.Payload)}, fromHere)
	return pk, packets.ErrRejectPacket
}

// offer keeps item if it is newer than what the node holds for its topic
// (a command feed: merges it in), publishes the result retained here, and
// sends it to the other nodes when it was published here. It publishes
// under the mirror's lock: no in-process subscriber to a status topic may
// publish one in turn (none does; its delivery runs in this call).
func (m *StatusMirror) offer(origin string, item StatusItem, how source) {
	local := how == fromHere
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.held[item.Topic]
	next, ok := decide(cur, origin, item, how)
	if !ok {
		if local {
			m.log.Debug("status: older than what is held; not published", "topic", item.Topic)
		}
		return
	}
	if next != cur {
		next.place, next.sum = hashes(next.item)
	}
	m.held[item.Topic] = next
	m.account(cur, -1)
	m.account(next, 1)
	if m.pub != nil {
		props := &packets.Properties{User: []packets.UserProperty{{Key: mirroredKey, Val: origin}}}
		if err := m.pub.Publish(next.item.Topic, next.item.Payload, true, next.item.QoS, props); err != nil {
			m.log.Warn("status: publish", "topic", item.Topic, "err", err)
		}
	}
	if local && m.wire != nil && !m.DropLive {
		m.send(m.wire.Subject(statusSubject), []StatusItem{next.item})
	}
}

// source is how a status message reached the mirror.
type source int

const (
	// fromHere: published on this node.
	fromHere source = iota
	// fromOrigin: sent by the node that published it.
	fromOrigin
	// relayed: passed on by another node (a snapshot).
	relayed
	// repaired: this node's guess for a holder that cannot speak.
	repaired
)

// statusFields are the fields of a status message the mirror orders by.
type statusFields struct {
	Time   time.Time `json:"time"`
	Online *bool     `json:"online"`
}

// decide returns what the node should hold for a topic after item, and
// whether that changed.
func decide(cur *held, origin string, item StatusItem, how source) (*held, bool) {
	if isFeed(item.Topic) {
		return decideFeed(cur, origin, item)
	}
	var f statusFields
	_ = json.Unmarshal(item.Payload, &f)
	item.Origin = origin
	next := &held{item: item, origin: origin, at: f.Time, seen: time.Now(), online: f.Online != nil && *f.Online, repaired: how == repaired}
	if cur == nil {
		return next, true
	}
	if cur.repaired && how == fromOrigin && cur.origin == origin && !next.at.Before(cur.at.Add(-time.Millisecond)) {
		// The holder's own word beats what another node guessed for it.
		return next, !bytes.Equal(cur.item.Payload, item.Payload)
	}
	if f.Online != nil && cur.origin != origin {
		// An agent's connection is said by the node it is connected to;
		// the node it left may say so late (it notices the loss after the
		// agent has reconnected elsewhere), so one node's word that a
		// connection ended says nothing of another node's connection.
		if !next.online && cur.online {
			return cur, false
		}
		if next.online && !cur.online {
			return next, true
		}
	}
	if next.at.Before(cur.at) || bytes.Equal(cur.item.Payload, item.Payload) {
		return cur, false
	}
	return next, true
}

func isFeed(topic string) bool {
	return strings.HasPrefix(topic, topics.StatusRoot+"tenants/") && strings.HasSuffix(topic, "/commands")
}

// feedKeys is what the merge reads of a feed: a command is completed
// every few milliseconds in a busy cluster, and each node takes in every
// one's feed, so the common case reads only the ids and times.
type feedKeys struct {
	Entries []struct {
		CommandID   string    `json:"command_id"`
		CompletedAt time.Time `json:"completed_at"`
	} `json:"entries"`
	Time time.Time `json:"time"`
}

// decideFeed is decide for a tenant's command feed: the union of what is
// held and item, newest first and bounded; changed is false when item
// adds nothing. An unreadable feed adds nothing.
func decideFeed(cur *held, origin string, item StatusItem) (*held, bool) {
	var fb feedKeys
	if json.Unmarshal(item.Payload, &fb) != nil {
		return cur, false
	}
	item.Origin = origin
	next := &held{item: item, origin: origin, at: fb.Time, seen: time.Now(), feed: make([]feedKey, len(fb.Entries))}
	for i, e := range fb.Entries {
		next.feed[i] = feedKey{id: e.CommandID, at: e.CompletedAt}
	}
	if cur == nil {
		return next, true
	}
	inA := make(map[string]bool, len(cur.feed))
	for _, k := range cur.feed {
		inA[k.id] = true
	}
	inB := make(map[string]bool, len(next.feed))
	added := false
	for _, k := range next.feed {
		inB[k.id] = true
		added = added || !inA[k.id]
	}
	if !added {
		return cur, false
	}
	if !fb.Time.Before(cur.at) && len(inB) == len(next.feed) && len(next.feed) <= topics.FeedMax &&
		slices.IsSortedFunc(next.feed, func(x, y feedKey) int { return y.at.Compare(x.at) }) && onlyPastTheBound(cur.feed, inB, next.feed) {
		// item is the union as it stands (its node built it on the feed
		// before it, as it does): stored as it came.
		return next, true
	}
	merged, ok := mergeFeed(cur.item.Payload, item.Payload)
	if !ok {
		return cur, false
	}
	var mk feedKeys
	_ = json.Unmarshal(merged, &mk)
	next.item.Payload, next.at, next.feed = merged, mk.Time, next.feed[:0]
	for _, e := range mk.Entries {
		next.feed = append(next.feed, feedKey{id: e.CommandID, at: e.CompletedAt})
	}
	return next, true
}

// onlyPastTheBound reports whether every entry of a that b lacks would
// fall past the bound of the union of a and b: b is full, and each is
// older than all of b.
func onlyPastTheBound(a []feedKey, inB map[string]bool, b []feedKey) bool {
	for _, k := range a {
		if !inB[k.id] && (len(b) < topics.FeedMax || !k.at.Before(b[len(b)-1].at)) {
			return false
		}
	}
	return true
}

// mergeFeed is the union of two readable feeds of one tenant, newest
// first and bounded.
func mergeFeed(a, b []byte) ([]byte, bool) {
	var fa, fb topics.FeedMsg
	if json.Unmarshal(a, &fa) != nil || json.Unmarshal(b, &fb) != nil {
		return nil, false
	}
	seen := make(map[string]bool, len(fa.Entries))
	for _, e := range fa.Entries {
		seen[e.CommandID] = true
	}
	out := fa
	out.Entries = slices.Clone(fa.Entries)
	for _, e := range fb.Entries {
		if !seen[e.CommandID] {
			seen[e.CommandID] = true
			out.Entries = append(out.Entries, e)
		}
	}
	slices.SortStableFunc(out.Entries, func(x, y topics.FeedEntry) int { return y.CompletedAt.Compare(x.CompletedAt) })
	if len(out.Entries) > topics.FeedMax {
		out.Entries = out.Entries[:topics.FeedMax]
	}
	if fb.Time.After(out.Time) {
		out.Time = fb.Time
	}
	merged, err := json.Marshal(out)
	if err != nil {
		return nil, false
	}
	return merged, true
}

// Attach connects the mirror to the other nodes: it hears what they
// publish from now on, and answers their requests for what it holds.
// Run then fetches what each other node holds.
func (m *StatusMirror) Attach(w *Wire) error {
	nc := w.Conn()
	if _, err := nc.Subscribe(w.Subject(statusSubject), m.receive); err != nil {
		return err
	}
	if _, err := nc.Subscribe(w.Subject(statusSubject, "snapshot", w.cfg.NodeID), m.receive); err != nil {
		return err
	}
	// A node asks for what this one holds: it is sent on the asker's
	// snapshot subject, then the request is answered, so the answer comes
	// after the last of it (one connection's messages keep their order).
	if _, err := nc.Subscribe(w.Subject(statusSubject, helloSubject, w.cfg.NodeID), func(msg *nats.Msg) {
		asker := string(msg.Data)
		if !validName(asker) || asker == w.cfg.NodeID {
			return
		}
		m.sendAll(w.Subject(statusSubject, "snapshot", asker))
		_ = msg.Respond([]byte(w.cfg.NodeID))
	}); err != nil {
		return err
	}
	if _, err := nc.Subscribe(w.Subject(statusSubject, digestSubject), func(msg *nats.Msg) { m.compare(w, msg) }); err != nil {
		return err
	}
	if _, err := nc.Subscribe(w.Subject(statusSubject, resyncSubject, w.cfg.NodeID), func(msg *nats.Msg) {
		var r resyncRequest
		if json.Unmarshal(msg.Data, &r) != nil || !validName(r.Asker) || r.Asker == w.cfg.NodeID || !validShare(r.Share, r.Shares) {
			return
		}
		if items := m.ownShare(r.Share, r.Shares); len(items) > 0 {
			m.sendBatches(w, w.Subject(statusSubject, "snapshot", r.Asker), items)
		}
	}); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	m.mu.Lock()
	m.wire = w
	m.mu.Unlock()
	return nil
}

// Run keeps the mirror whole until ctx ends. It fetches what every other
// live node holds once per start of that node (a node that joins late
// gets the current state; the others get what it derived as it
// started), and says offline, on this node only, every agent whose last
// word is that it is connected to a node that has since died (killed, it
// could not say so itself).
func (m *StatusMirror) Run(ctx context.Context, pool *pgxpool.Pool, every time.Duration) {
	m.mu.Lock()
	w := m.wire
	m.mu.Unlock()
	if w == nil {
		return
	}
	synced := map[string]time.Time{}
	t := time.NewTicker(every)
	defer t.Stop()
	// The re-sync is spread over the ticks of one period: each sends the
	// topics of one share, so no tick sends everything.
	shares := max(1, int(m.ResyncEvery/every))
	m.keepDigests(shares)
	for tick := 0; ; tick++ {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		nodes, err := liveNodes(qctx, pool)
		cancel()
		if err == nil {
			alive := map[string]bool{m.node: true}
			for _, n := range nodes {
				if !n.Alive || n.ID == m.node {
					continue
				}
				alive[n.ID] = true
				if synced[n.ID].Equal(n.StartedAt) {
					continue
				}
				if !synced[n.ID].IsZero() {
					// It has restarted since: the connections it held
					// before are gone (it says its new ones itself).
					id := n.ID
					m.repairWhere(func(h *held) bool { return h.origin == id && h.seen.Before(n.StartedAt) })
				}
				// Its routes or its subscriptions may not have reached
				// this node yet: asked again next time.
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := w.Conn().RequestWithContext(rctx, w.Subject(statusSubject, helloSubject, n.ID), []byte(m.node))
				cancel()
				if err == nil {
					synced[n.ID] = n.StartedAt
				} else {
					m.log.Debug("status: snapshot of another node not had yet", "node", n.ID, "err", err)
				}
			}
			m.repair(alive)
			if m.ResyncEvery > 0 && len(alive) > 1 {
				m.resend(w, tick%shares, shares)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// receive applies a batch another node sent.
func (m *StatusMirror) receive(msg *nats.Msg) {
	if len(msg.Data) > maxStatusMsg {
		return
	}
	var b statusBatch
	if err := json.Unmarshal(msg.Data, &b); err != nil {
		m.log.Warn("status: unreadable message from another node", "err", err)
		return
	}
	if b.From == m.node {
		return
	}
	for _, it := range b.Items {
		if !mirrored(it.Topic) || len(it.Payload) == 0 || it.QoS > 1 {
			continue
		}
		origin := b.From
		if it.Origin != "" {
			origin = it.Origin
		}
		if origin == m.node {
			it, ok := m.ownFromBefore(it)
			if !ok {
				continue
			}
			m.offer(origin, it, relayed)
			continue
		}
		how := relayed
		if origin == b.From {
			how = fromOrigin
		}
		m.offer(origin, it, how)
	}
}

// liveNodes is the nodes table without the agents each holds: what Run
// reads twice a second needs no count over every agent's presence.
func liveNodes(ctx context.Context, pool *pgxpool.Pool) ([]Node, error) {
	rows, err := pool.Query(ctx, `SELECT id, started_at, left_at IS NULL AND lease_expires_at > now() FROM nodes`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		err := r.Scan(&n.ID, &n.StartedAt, &n.Alive)
		return n, err
	})
}

// ownFromBefore is what to make of this node's own word passed back by
// another: nothing when this node holds its own word on the topic (it
// knows best), and an agent's connection said before a restart is gone.
func (m *StatusMirror) ownFromBefore(it StatusItem) (StatusItem, bool) {
	m.mu.Lock()
	cur := m.held[it.Topic]
	m.mu.Unlock()
	if cur != nil && cur.origin == m.node {
		return it, false
	}
	var f statusFields
	if json.Unmarshal(it.Payload, &f) != nil || f.Online == nil || !*f.Online {
		return it, true
	}
	b, ok := offline(&held{item: it, at: f.Time})
	if !ok {
		return it, false
	}
	it.Payload = b
	return it, true
}

// sendAll sends everything the node holds to subject, in batches.
func (m *StatusMirror) sendAll(subject string) {
	m.mu.Lock()
	items := make([]StatusItem, 0, len(m.held))
	for _, h := range m.held {
		items = append(items, h.item)
	}
	w := m.wire
	m.mu.Unlock()
	if w == nil {
		return
	}
	m.sendBatches(w, subject, items)
}

// resend puts right, on the other nodes, share of shares of the messages
// this node holds as its own last word (what another node said since is
// its to send; a guess for a dead node is no one's word). It sends their
// digest, and a node whose copy differs asks for them (compare), so a
// cluster in agreement exchanges a few bytes a tick. A tenant's command
// feed is merged from every node's, so no two nodes need hold the same
// bytes for it: the share's feeds are sent as they are.
func (m *StatusMirror) resend(w *Wire, share, shares int) {
	n, sum, feeds := m.digestOf(m.node, share, shares)
	if len(feeds) > 0 {
		m.sendBatches(w, w.Subject(statusSubject), feeds)
	}
	b, err := json.Marshal(statusDigest{From: m.node, Share: share, Shares: shares, Count: n, Sum: sum})
	if err == nil {
		err = w.Conn().Publish(w.Subject(statusSubject, digestSubject), b)
	}
	if err != nil {
		m.log.Warn("status: digest not sent to the other nodes", "err", err)
	}
}

// statusDigest sums up one share of a node's own word.
type statusDigest struct {
	From   string `json:"from"`
	Share  int    `json:"share"`
	Shares int    `json:"shares"`
	Count  int    `json:"count"`
	Sum    uint64 `json:"sum"`
}

// resyncRequest asks a node for one share of its own word.
type resyncRequest struct {
	Asker  string `json:"asker"`
	Share  int    `json:"share"`
	Shares int    `json:"shares"`
}

func validShare(share, shares int) bool {
	return shares > 0 && shares <= maxShares && share >= 0 && share < shares
}

// shareOf names one share of one origin's word.
type shareOf struct {
	origin string
	share  int
}

// shareDigest is a share's count of messages and the sum of their hashes.
type shareDigest struct {
	n   int
	sum uint64
}

// account adds h to (sign 1) or takes it from (sign -1) the digests, under
// m.mu.
func (m *StatusMirror) account(h *held, sign int) {
	if h == nil {
		return
	}
	if isFeed(h.item.Topic) {
		if m.feeds == nil {
			m.feeds = map[string]bool{}
		}
		m.feeds[h.item.Topic] = true
		return
	}
	if h.online {
		if m.online == nil {
			m.online = map[string]int{}
		}
		if m.online[h.origin] += sign; m.online[h.origin] == 0 {
			delete(m.online, h.origin)
		}
	}
	if m.aggShares == 0 {
		return
	}
	k := shareOf{h.origin, int(h.place % uint32(m.aggShares))}
	d := m.agg[k]
	d.n += sign
	d.sum += uint64(sign) * h.sum // wraps as the scan's sum does
	if d.n == 0 {
		delete(m.agg, k)
		return
	}
	m.agg[k] = d
}

// keepDigests has the digests of shares shares kept from now on.
func (m *StatusMirror) keepDigests(shares int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.aggShares, m.agg = shares, map[shareOf]shareDigest{}
	for _, h := range m.held {
		m.account(h, 1)
	}
}

// digestOf is how many messages of origin, feeds left out, this node
// holds in share of shares, and the sum of their hashes (the same
// whatever order they are held in), with the feeds of the share. Guesses
// for a dead node count as that node's word: its own word differs, and
// should replace them.
func (m *StatusMirror) digestOf(origin string, share, shares int) (n int, sum uint64, feeds []StatusItem) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if shares == m.aggShares {
		d := m.agg[shareOf{origin, share}]
		for topic := range m.feeds {
			if h := m.held[topic]; h.origin == origin && int(h.place%uint32(shares)) == share {
				feeds = append(feeds, h.item)
			}
		}
		return d.n, d.sum, feeds
	}
	// Another node's count of shares: the digest is worked out afresh.
	for topic, h := range m.held {
		if h.origin != origin || int(h.place%uint32(shares)) != share {
			continue
		}
		if isFeed(topic) {
			feeds = append(feeds, h.item)
			continue
		}
		n++
		sum += h.sum
	}
	return n, sum, feeds
}

// hashes are a message's place (its topic's hash) and sum (its topic's
// and payload's).
func hashes(it StatusItem) (place uint32, sum uint64) {
	p := fnv.New32a()
	_, _ = p.Write([]byte(it.Topic))
	d := fnv.New64a()
	_, _ = d.Write([]byte(it.Topic))
	_, _ = d.Write([]byte{0})
	_, _ = d.Write(it.Payload)
	return p.Sum32(), d.Sum64()
}

// compare checks another node's digest against this node's copy of that
// share of its word, and asks for the share when they differ.
func (m *StatusMirror) compare(w *Wire, msg *nats.Msg) {
	var d statusDigest
	if json.Unmarshal(msg.Data, &d) != nil || !validName(d.From) || d.From == m.node || !validShare(d.Share, d.Shares) {
		return
	}
	if n, sum, _ := m.digestOf(d.From, d.Share, d.Shares); n == d.Count && sum == d.Sum {
		return
	}
	b, err := json.Marshal(resyncRequest{Asker: m.node, Share: d.Share, Shares: d.Shares})
	if err == nil {
		err = w.Conn().Publish(w.Subject(statusSubject, resyncSubject, d.From), b)
	}
	if err != nil {
		m.log.Warn("status: re-sync not asked for", "node", d.From, "err", err)
	}
}

// ownShare is share of shares of the messages this node holds as its own
// last word.
func (m *StatusMirror) ownShare(share, shares int) []StatusItem {
	m.mu.Lock()
	defer m.mu.Unlock()
	var items []StatusItem
	for _, h := range m.held {
		if h.origin == m.node && !h.repaired && int(h.place%uint32(shares)) == share {
			items = append(items, h.item)
		}
	}
	return items
}

// sendBatches sends items to subject in batches of at most maxBatch.
func (m *StatusMirror) sendBatches(w *Wire, subject string, items []StatusItem) {
	var batch []StatusItem
	size := 0
	for _, it := range items {
		if size+len(it.Payload) > maxBatch && len(batch) > 0 {
			m.sendOn(w, subject, batch)
			batch, size = nil, 0
		}
		batch = append(batch, it)
		size += len(it.Payload) + len(it.Topic) + 32
	}
	if len(batch) > 0 {
		m.sendOn(w, subject, batch)
	}
}

func (m *StatusMirror) send(subject string, items []StatusItem) { m.sendOn(m.wire, subject, items) }

func (m *StatusMirror) sendOn(w *Wire, subject string, items []StatusItem) {
	b, err := json.Marshal(statusBatch{From: m.node, Items: items})
	if err == nil {
		err = w.Conn().Publish(subject, b)
	}
	if err != nil {
		m.log.Warn("status: not sent to the other nodes", "items", len(items), "err", err)
	}
}

// Held returns the payload held for topic, for tests and the API.
func (m *StatusMirror) Held(topic string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.held[topic]
	if !ok {
		return nil, false
	}
	return h.item.Payload, true
}

func (m *StatusMirror) repair(alive map[string]bool) {
	// Run asks twice a second; the scan of every agent's status held (a
	// node holds the whole cluster's) is only worth it when some node
	// no longer alive is still said to hold an agent.
	m.mu.Lock()
	stale := false
	for origin, n := range m.online {
		stale = stale || n > 0 && !alive[origin]
	}
	m.mu.Unlock()
	if stale {
		m.repairWhere(func(h *held) bool { return !alive[h.origin] })
	}
}

// repairWhere says offline, on this node only, every agent held online
// whose holder matches void.
func (m *StatusMirror) repairWhere(void func(*held) bool) {
	m.mu.Lock()
	var dead []*held
	for _, h := range m.held {
		if h.online && void(h) {
			dead = append(dead, h)
		}
	}
	m.mu.Unlock()
	for _, h := range dead {
		if b, ok := offline(h); ok {
			// Offered as the holder's own word, so the agent's connection
			// elsewhere, said meanwhile, still wins.
			m.offer(h.origin, StatusItem{Topic: h.item.Topic, QoS: h.item.QoS, Payload: b}, repaired)
		}
	}
}

// offline is h's agent status said offline, timed just after h: anything
// its holder says later (a new connection, once restarted) still wins.
func offline(h *held) ([]byte, bool) {
	var st topics.AgentStatusMsg
	if json.Unmarshal(h.item.Payload, &st) != nil {
		return nil, false
	}
	st.Online, st.Stale, st.Time = false, false, h.at.Add(time.Millisecond)
	b, err := json.Marshal(st)
	return b, err == nil
}
