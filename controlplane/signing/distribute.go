package signing

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/topics"
)

// Broker is what the distributor needs of the broker.
type Broker interface {
	Publish(topic string, payload []byte, retain bool, qos byte, props *packets.Properties) error
	Server() *mqtt.Server
}

// Distributor hands the key chain to agents: to every agent connected here
// when the key set changes, and to each agent that lacks it as it
// subscribes to its activation topic, before the retained activation is
// delivered (so an agent offline during a rotation learns the new key
// before it sees anything signed with it). It travels on the agent's own
// activation topic: no new topic, and none another agent can read.
//
// Agents say which keys they hold in their heartbeats; the distributor
// records (and audits) each agent's acceptance of the current key set.
type Distributor struct {
	ring *Ring
	pool *pgxpool.Pool
	log  *slog.Logger
	// PollEvery is how often the key set is read for changes (1s).
	PollEvery time.Duration

	broker Broker
	mu     sync.Mutex
	// accepted is, by agent id, the key set (newest, oldest) it last
	// confirmed.
	accepted map[string][2]string
	// offered is when each agent was last sent the chain.
	offered map[string]time.Time
	audits  chan audit.Entry
	accepts chan acceptance
	stop    chan struct{}
	done    sync.WaitGroup
}

type acceptance struct {
	agent          string
	newest, oldest string
}

// heartbeatSub is the distributor's inline subscription id.
const heartbeatSub = 30

// NewDistributor returns a Distributor for ring; Start it with the broker.
func NewDistributor(ring *Ring, pool *pgxpool.Pool, log *slog.Logger) *Distributor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Distributor{ring: ring, pool: pool, log: log, PollEvery: time.Second, accepted: map[string][2]string{},
		offered: map[string]time.Time{},
		audits:  make(chan audit.Entry, 4096), accepts: make(chan acceptance, 1024), stop: make(chan struct{})}
}

// Start loads what agents have confirmed, listens to heartbeats and
// starts watching the key set.
func (d *Distributor) Start(ctx context.Context, b Broker) error {
	d.broker = b
	rows, err := d.pool.Query(ctx, "SELECT agent_id::text, newest_key_id, oldest_key_id FROM signing_key_agents")
	if err != nil {
		return err
	}
	var id, newest, oldest string
	if _, err := pgx.ForEachRow(rows, []any{&id, &newest, &oldest}, func() error {
		d.accepted[id] = [2]string{newest, oldest}
		return nil
	}); err != nil {
		return err
	}
	if err := b.Server().Subscribe(topics.AgentFilter(topics.Heartbeat), heartbeatSub, d.onHeartbeat); err != nil {
		return err
	}
	d.done.Add(2)
	go d.watch()
	go d.write()
	return nil
}

// Stop ends the watch and flushes pending audit rows.
func (d *Distributor) Stop() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	d.done.Wait()
}

func (d *Distributor) watch() {
	defer d.done.Done()
	t := time.NewTicker(d.PollEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := d.ring.refresh(ctx, func() {
			for _, cl := range d.broker.Server().Clients.GetAll() {
				if id, err := topics.ParseAgentID(cl.ID); err == nil && !cl.Net.Inline && !cl.Closed() {
					d.offer(id, "key_change")
				}
			}
		})
		cancel()
		// Said once when reading starts failing and once when it works
		// again, not every second in between.
		switch {
		case err != nil && !failing:
			d.log.Warn("cannot read the signing key set; signing with the keys last read", "err", err)
		case err == nil && failing:
			d.log.Info("reading the signing key set again")
		}
		failing = err != nil
	}
}

// offer publishes the chain to an agent that has not confirmed the
// current key set.
func (d *Distributor) offer(id topics.AgentID, via string) {
	chain, newest, oldest, ok := d.ring.Chain()
	if !ok {
		return
	}
	d.mu.Lock()
	acc, known := d.accepted[id.String()]
	have := known && d.ring.Holds(acc[0], acc[1])
	if !have {
		d.offered[id.String()] = time.Now()
	}
	d.mu.Unlock()
	if have {
		return
	}
	if err := d.broker.Publish(id.Topic(topics.Activation), chain, false, 1, nil); err != nil {
		d.log.Warn("publish key chain", "agent", id.String(), "err", err)
		return
	}
	d.queue(audit.Entry{Actor: "system", Action: "signing_key.publish", Outcome: audit.Success, AgentID: id.String(),
		Detail: map[string]any{"newest_key_id": newest, "oldest_key_id": oldest, "via": via}})
}

func (d *Distributor) queue(e audit.Entry) {
	select {
	case d.audits <- e:
	default:
		d.log.Error("audit queue full; key chain publish not audited", "agent", e.AgentID)
	}
}

// onHeartbeat records an agent that reports holding the current key set.
func (d *Distributor) onHeartbeat(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	id, kind, ok := topics.ParseAgentTopic(pk.TopicName)
	if !ok || kind != topics.Heartbeat || pk.Origin != id.String() {
		return
	}
	var hb topics.HeartbeatMsg
	if err := topics.Decode(pk.Payload, topics.MaxEnvelope, &hb); err != nil || hb.AgentID != id.String() || hb.SigningKey == "" {
		return
	}
	if _, _, _, ok := d.ring.Chain(); !ok {
		return
	}
	if !d.ring.Holds(hb.SigningKey, hb.OldestKey) {
		d.behind(id)
		return
	}
	held := [2]string{hb.SigningKey, hb.OldestKey}
	d.mu.Lock()
	fresh := d.accepted[id.String()] != held
	if fresh {
		d.accepted[id.String()] = held
	}
	d.mu.Unlock()
	if fresh {
		select {
		case d.accepts <- acceptance{agent: id.String(), newest: held[0], oldest: held[1]}:
		default:
			d.forget(id.String()) // the next heartbeat tries again
		}
	}
}

// reofferEvery bounds how often an agent whose heartbeat shows it behind
// the key set is sent the chain again (a heartbeat may have left before the
// chain just sent arrived).
const reofferEvery = time.Minute

// behind handles an agent whose heartbeat reports a key set other than
// the current one: one that lost its key file, or missed the chain. It is
// sent the chain again, at most once a reofferEvery.
func (d *Distributor) behind(id topics.AgentID) {
	now := time.Now()
	d.mu.Lock()
	last, seen := d.offered[id.String()]
	again := !seen || now.Sub(last) >= reofferEvery
	if again {
		delete(d.accepted, id.String())
	}
	d.mu.Unlock()
	if again {
		d.offer(id, "heartbeat")
	}
}

func (d *Distributor) forget(agent string) {
	d.mu.Lock()
	delete(d.accepted, agent)
	d.mu.Unlock()
}

// write records publishes and acceptances, in batches, off the broker's
// goroutines.
func (d *Distributor) write() {
	defer d.done.Done()
	for {
		var pub []audit.Entry
		var acc []acceptance
		select {
		case e := <-d.audits:
			pub = append(pub, e)
		case a := <-d.accepts:
			acc = append(acc, a)
		case <-d.stop:
			// Flush what is queued, then stop.
			for {
				select {
				case e := <-d.audits:
					pub = append(pub, e)
				case a := <-d.accepts:
					acc = append(acc, a)
				default:
					d.flush(pub, acc)
					return
				}
			}
		}
	more:
		for len(pub)+len(acc) < 500 {
			select {
			case e := <-d.audits:
				pub = append(pub, e)
			case a := <-d.accepts:
				acc = append(acc, a)
			default:
				break more
			}
		}
		d.flush(pub, acc)
	}
}

func (d *Distributor) flush(pub []audit.Entry, acc []acceptance) {
	if len(pub) == 0 && len(acc) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		for _, e := range pub {
			if _, err := audit.Record(ctx, tx, e); err != nil {
				return err
			}
		}
		for _, a := range acc {
			// Another node may have recorded it already: audited once.
			tag, err := tx.Exec(ctx, `INSERT INTO signing_key_agents (agent_id, newest_key_id, oldest_key_id) VALUES ($1, $2, $3)
				ON CONFLICT (agent_id) DO UPDATE SET newest_key_id = EXCLUDED.newest_key_id, oldest_key_id = EXCLUDED.oldest_key_id, accepted_at = now()
				WHERE (signing_key_agents.newest_key_id, signing_key_agents.oldest_key_id) IS DISTINCT FROM (EXCLUDED.newest_key_id, EXCLUDED.oldest_key_id)`,
				a.agent, a.newest, a.oldest)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				continue
			}
			if _, err := audit.Record(ctx, tx, audit.Entry{Actor: "agent:" + a.agent, Action: "signing_key.accept", Outcome: audit.Success,
				AgentID: a.agent, Detail: map[string]any{"newest_key_id": a.newest, "oldest_key_id": a.oldest}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		d.log.Error("recording key chain deliveries", "publishes", len(pub), "acceptances", len(acc), "err", err)
		for _, a := range acc {
			d.forget(a.agent)
		}
	}
}

// Hook returns the broker hook that hands the chain to an agent as it
// subscribes to its activation topic.
func (d *Distributor) Hook() mqtt.Hook { return &hook{d: d} }

type hook struct {
	mqtt.HookBase
	d *Distributor
}

func (h *hook) ID() string { return "argus-signing-keys" }

func (h *hook) Provides(b byte) bool { return b == mqtt.OnSubscribed }

// OnSubscribed runs before the broker delivers the retained activation, so
// the chain reaches the agent first.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline || h.d.broker == nil {
		return
	}
	id, err := topics.ParseAgentID(cl.ID)
	if err != nil {
		return
	}
	for i, f := range pk.Filters {
		if f.Filter == id.Topic(topics.Activation) && i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			h.d.offer(id, "connect")
		}
	}
}
