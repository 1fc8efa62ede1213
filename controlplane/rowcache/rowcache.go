// Package rowcache keeps small in-process caches of database rows that are
// read on every request and changed rarely: operator tokens and support
// sessions. Triggers on those tables announce every change on the
// argus_rows channel (migration 0005), whoever makes it: this server,
// another node, or someone at a psql prompt. A Listener holds one
// connection LISTENing there and evicts what changed.
//
// A cache only holds entries while that connection is up: losing it
// empties every cache and turns them off until it is back, because
// announcements made meanwhile are lost. Entries also expire after a TTL,
// which bounds how stale one can be should the connection hang without
// failing.
package rowcache

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Channel is the PostgreSQL notification channel the triggers announce on.
const Channel = "argus_rows"

// all is the id that stands for every entry of a cache.
const all = "*"

// Listener receives the announcements and evicts from its caches.
type Listener struct {
	connect func(context.Context) (*pgx.Conn, error)
	log     *slog.Logger

	mu     sync.Mutex
	caches map[string][]evicter // by cache name
	live   bool
}

type evicter interface {
	evict(id string)
	setLive(live bool)
}

// NewListener returns a Listener that opens its connection with connect.
// Run starts it.
func NewListener(connect func(context.Context) (*pgx.Conn, error), log *slog.Logger) *Listener {
	return &Listener{connect: connect, log: log, caches: map[string][]evicter{}}
}

// Live reports whether the Listener is connected and listening.
func (l *Listener) Live() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live
}

func (l *Listener) register(name string, c evicter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.caches[name] = append(l.caches[name], c)
	c.setLive(l.live)
}

func (l *Listener) setLive(live bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live = live
	for _, cs := range l.caches {
		for _, c := range cs {
			c.setLive(live)
		}
	}
}

func (l *Listener) dispatch(payload string) {
	name, id, ok := strings.Cut(payload, ":")
	if !ok {
		id = all
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.caches[name] {
		c.evict(id)
	}
}

// Run listens until ctx ends, reconnecting with back-off after a failure.
// It returns once it has stopped listening.
func (l *Listener) Run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := l.listen(ctx)
		l.setLive(false)
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("row change listener lost; caches off until it is back", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listen serves one connection until it fails.
func (l *Listener) listen(ctx context.Context) error {
	conn, err := l.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	l.setLive(true)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		l.dispatch(n.Payload)
	}
}

// Cache holds rows of one kind by id. The zero of *Cache (nil) holds
// nothing: a store without a Listener reads every time.
type Cache[V any] struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu   sync.Mutex
	rows map[string]entry[V]
	gen  uint64 // moves on every eviction; see Gen
	live bool
}

type entry[V any] struct {
	v  V
	at time.Time
}

// New returns a cache for the rows announced under name, each kept at most
// ttl, at most max of them.
func New[V any](l *Listener, name string, ttl time.Duration, max int) *Cache[V] {
	c := &Cache[V]{ttl: ttl, max: max, now: time.Now, rows: map[string]entry[V]{}}
	l.register(name, c)
	return c
}

// Get returns the cached row for id.
func (c *Cache[V]) Get(id string) (V, bool) {
	var zero V
	if c == nil {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.rows[id]
	if !ok {
		return zero, false
	}
	if c.now().Sub(e.at) >= c.ttl {
		delete(c.rows, id)
		return zero, false
	}
	return e.v, true
}

// Gen returns the cache's generation, to be taken before reading a row
// from the database and handed to Put with it. A change announced after
// the read began moves the generation, and Put then drops the row it read,
// which may be older than the change.
func (c *Cache[V]) Gen() uint64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Put caches v for id, read from the database after gen was taken, unless
// anything was evicted since or the cache is off.
func (c *Cache[V]) Put(id string, v V, gen uint64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || gen != c.gen {
		return
	}
	if _, ok := c.rows[id]; !ok && len(c.rows) >= c.max {
		for k := range c.rows { // any one: the cache is a shortcut, not a store
			delete(c.rows, k)
			break
		}
	}
	c.rows[id] = entry[V]{v: v, at: c.now()}
}

// Evict drops id, for a change this process made: it takes effect before
// the announcement comes back.
func (c *Cache[V]) Evict(id string) {
	if c != nil {
		c.evict(id)
	}
}

func (c *Cache[V]) evict(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if id == all {
		clear(c.rows)
		return
	}
	delete(c.rows, id)
}

func (c *Cache[V]) setLive(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live = live
	c.gen++
	clear(c.rows)
}
