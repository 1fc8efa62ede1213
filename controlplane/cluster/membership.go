// Package cluster makes several argus-server nodes one service: each node
// holds a lease in PostgreSQL (the nodes table) and fences itself when it
// cannot renew it, nodes reach each other over NATS, and what one node
// commits (an end, a revocation) is broadcast to the others. A single
// node is a cluster of one: it holds a lease too, and its NATS server
// listens to no one.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	// DefaultLease is how long a node's lease lasts after each renewal.
	DefaultLease = 10 * time.Second
	// DefaultRenewEvery is how often a node renews its lease.
	DefaultRenewEvery = 2 * time.Second
	// fenceMargin is how much earlier than its lease's end, by its own
	// clock, a node fences itself: the others' view of the lease comes
	// from the database's clock, which started counting no earlier than
	// the renewal was sent.
	fenceMargin = time.Second
)

// Self describes the local node as the others see it.
type Self struct {
	ID      string
	APIURL  string
	MQTTURL string
	Version string
}

// Membership keeps the local node's lease and tells it when it must
// fence itself (it can no longer prove to the others that it is alive)
// and when it may serve again.
type Membership struct {
	pool       *pgxpool.Pool
	self       Self
	lease      time.Duration
	renewEvery time.Duration
	log        *slog.Logger

	// OnFence and OnUnfence run, on the membership's goroutine, when the
	// node loses and regains its lease.
	OnFence   func()
	OnUnfence func()

	mu sync.Mutex
	// validUntil is when, by this node's monotonic clock, its lease ends
	// for the others (less fenceMargin).
	validUntil time.Time
	fenced     bool
}

// NewMembership returns the membership of self; Join it, then Run it.
func NewMembership(pool *pgxpool.Pool, self Self, lease, renewEvery time.Duration, log *slog.Logger) *Membership {
	if lease <= 0 {
		lease = DefaultLease
	}
	if renewEvery <= 0 {
		renewEvery = DefaultRenewEvery
	}
	return &Membership{pool: pool, self: self, lease: lease, renewEvery: renewEvery, log: log}
}

// Join records the node (a restarted node takes its row over) and takes
// its first lease. A node that cannot join does not start.
func (m *Membership) Join(ctx context.Context) error {
	sent := time.Now()
	_, err := m.pool.Exec(ctx, `
		INSERT INTO nodes (id, api_url, mqtt_url, version, started_at, renewed_at, lease_expires_at, fenced, left_at)
		VALUES ($1, $2, $3, $4, now(), now(), now() + $5::interval, false, NULL)
		ON CONFLICT (id) DO UPDATE SET api_url = EXCLUDED.api_url, mqtt_url = EXCLUDED.mqtt_url,
			version = EXCLUDED.version, started_at = now(), renewed_at = now(),
			lease_expires_at = EXCLUDED.lease_expires_at, fenced = false, left_at = NULL`,
		m.self.ID, m.self.APIURL, m.self.MQTTURL, m.self.Version, m.lease)
	if err != nil {
		return fmt.Errorf("cluster: join as node %s: %w", m.self.ID, err)
	}
	m.mu.Lock()
	m.validUntil = sent.Add(m.lease - fenceMargin)
	m.mu.Unlock()
	return nil
}

// Fenced reports whether the node holds no valid lease: it must deliver
// nothing to agents, and the others may take them over.
func (m *Membership) Fenced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fenced || !time.Now().Before(m.validUntil)
}

// Run renews the lease until ctx ends, fencing the node while it cannot,
// and clears the presence held by nodes whose lease has run out.
func (m *Membership) Run(ctx context.Context) {
	t := time.NewTicker(m.renewEvery)
	defer t.Stop()
	// The fence must come on time even while a renewal hangs.
	check := time.NewTicker(250 * time.Millisecond)
	defer check.Stop()
	renewed := make(chan time.Time, 1)
	busy := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
		case <-t.C:
			if !busy {
				busy = true
				go func() {
					sent := time.Now()
					rctx, cancel := context.WithTimeout(ctx, m.lease)
					err := m.renew(rctx)
					cancel()
					if err != nil {
						if ctx.Err() == nil {
							m.log.Warn("cluster: lease not renewed", "node", m.self.ID, "err", err)
						}
						sent = time.Time{}
					}
					renewed <- sent
				}()
			}
		case sent := <-renewed:
			busy = false
			if !sent.IsZero() {
				m.mu.Lock()
				m.validUntil = sent.Add(m.lease - fenceMargin)
				m.mu.Unlock()
			}
		}
		m.updateFence()
	}
}

// updateFence turns the fence on when the lease has run out and off once
// it is valid again, and tells the node.
func (m *Membership) updateFence() {
	m.mu.Lock()
	expired := !time.Now().Before(m.validUntil)
	changed := expired != m.fenced
	m.fenced = expired
	m.mu.Unlock()
	if !changed {
		return
	}
	if expired {
		m.log.Error("cluster: node fenced: its lease ran out; it delivers nothing and sends its agents elsewhere", "node", m.self.ID)
		if m.OnFence != nil {
			m.OnFence()
		}
		return
	}
	m.log.Info("cluster: lease renewed; node serves again", "node", m.self.ID)
	if m.OnUnfence != nil {
		m.OnUnfence()
	}
}

// renew extends the lease, records whether the node is fenced, and
// clears the presence rows of nodes whose lease has run out.
func (m *Membership) renew(ctx context.Context) error {
	m.mu.Lock()
	fenced := m.fenced
	m.mu.Unlock()
	tag, err := m.pool.Exec(ctx, `UPDATE nodes SET renewed_at = now(), lease_expires_at = now() + $2::interval, fenced = $3
		WHERE id = $1 AND left_at IS NULL`, m.self.ID, m.lease, fenced)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return errors.New("node row missing or marked as left")
	}
	if _, err := m.pool.Exec(ctx, `DELETE FROM agent_presence p USING nodes n
		WHERE p.node_id = n.id AND n.id <> $1 AND n.lease_expires_at < now()`, m.self.ID); err != nil {
		return fmt.Errorf("clearing dead nodes' presence: %w", err)
	}
	return nil
}

// Leave marks the node as gone (a clean stop): the others need not wait
// for its lease to run out.
func (m *Membership) Leave(ctx context.Context) error {
	_, err := m.pool.Exec(ctx, `UPDATE nodes SET left_at = now(), lease_expires_at = now() WHERE id = $1`, m.self.ID)
	if err != nil {
		return fmt.Errorf("cluster: leave: %w", err)
	}
	return nil
}

// Node is one node's row, as `argusctl cluster status` shows it.
type Node struct {
	ID         string     `json:"id"`
	APIURL     string     `json:"api_url"`
	MQTTURL    string     `json:"mqtt_url"`
	Version    string     `json:"version"`
	StartedAt  time.Time  `json:"started_at"`
	RenewedAt  time.Time  `json:"renewed_at"`
	LeaseAge   float64    `json:"lease_age_seconds"`
	Alive      bool       `json:"alive"`
	Fenced     bool       `json:"fenced"`
	LeftAt     *time.Time `json:"left_at,omitempty"`
	AgentsHeld int        `json:"agents_held"`
	Reachable  *bool      `json:"reachable,omitempty"`
	ThisNode   bool       `json:"this_node,omitempty"`
}

// Nodes lists every node that has not left or whose row is recent
// (left or dead within the last hour), with the agents each holds.
func Nodes(ctx context.Context, pool *pgxpool.Pool) ([]Node, error) {
	rows, err := pool.Query(ctx, `
		SELECT n.id, n.api_url, n.mqtt_url, n.version, n.started_at, n.renewed_at,
		       EXTRACT(EPOCH FROM now() - n.renewed_at)::float8, n.left_at IS NULL AND n.lease_expires_at > now(),
		       n.fenced, n.left_at, (SELECT count(*) FROM agent_presence p WHERE p.node_id = n.id)::int
		FROM nodes n
		WHERE n.lease_expires_at > now() - interval '1 hour'
		ORDER BY n.id`)
	if err != nil {
		return nil, fmt.Errorf("cluster: nodes: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		err := r.Scan(&n.ID, &n.APIURL, &n.MQTTURL, &n.Version, &n.StartedAt, &n.RenewedAt, &n.LeaseAge, &n.Alive,
			&n.Fenced, &n.LeftAt, &n.AgentsHeld)
		return n, err
	})
}

// Status is Nodes with each live node's reachability over NATS (asked of
// all at once, each within timeout) and this node marked.
func Status(ctx context.Context, pool *pgxpool.Pool, w *Wire, timeout time.Duration) ([]Node, error) {
	nodes, err := Nodes(ctx, pool)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for i := range nodes {
		n := &nodes[i]
		if w == nil {
			continue
		}
		n.ThisNode = n.ID == w.cfg.NodeID
		if n.LeftAt != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := w.Reachable(ctx, n.ID, timeout)
			n.Reachable = &ok
		}()
	}
	wg.Wait()
	return nodes, nil
}
