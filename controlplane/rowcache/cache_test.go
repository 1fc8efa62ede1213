package rowcache

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// live returns a cache that is on, with a clock the test moves.
func live(ttl time.Duration, max int) (*Cache[string], *time.Time) {
	now := time.Unix(1_000_000, 0)
	c := &Cache[string]{ttl: ttl, max: max, now: func() time.Time { return now }, rows: map[string]entry[string]{}}
	c.setLive(true)
	return c, &now
}

func TestCache_EntriesExpireAfterTTL(t *testing.T) {
	c, now := live(time.Second, 10)
	c.Put("a", "row", c.Gen())
	*now = now.Add(999 * time.Millisecond)
	v, ok := c.Get("a")
	assert.True(t, ok)
	assert.Equal(t, "row", v)
	*now = now.Add(time.Millisecond)
	_, ok = c.Get("a")
	assert.False(t, ok, "an entry as old as the TTL is read again")
}

func TestCache_HoldsAtMostMax(t *testing.T) {
	c, _ := live(time.Hour, 3)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		c.Put(id, id, c.Gen())
	}
	assert.Len(t, c.rows, 3)
	_, ok := c.Get("e")
	assert.True(t, ok, "the newest entry is kept")
}

func TestCache_PutAfterAnEvictionIsDropped(t *testing.T) {
	c, _ := live(time.Hour, 10)
	gen := c.Gen()
	c.Evict("other") // a change announced while the row was being read
	c.Put("a", "maybe stale", gen)
	_, ok := c.Get("a")
	assert.False(t, ok)
}

func TestCache_OffHoldsNothing(t *testing.T) {
	c, _ := live(time.Hour, 10)
	c.Put("a", "row", c.Gen())
	c.setLive(false)
	_, ok := c.Get("a")
	assert.False(t, ok, "going off empties the cache")
	c.Put("b", "row", c.Gen())
	_, ok = c.Get("b")
	assert.False(t, ok, "an off cache keeps nothing")
}

func TestCache_NilReadsThrough(t *testing.T) {
	var c *Cache[string]
	c.Put("a", "row", c.Gen())
	c.Evict("a")
	_, ok := c.Get("a")
	assert.False(t, ok)
}
