// Package heapfloor keeps the garbage collector's heap goal from falling
// below a floor.
//
// With GOGC=100 the collector lets the heap grow to twice what was live
// after the last cycle. A server whose live heap is a few MiB then
// collects many times a second under load, and each cycle has fixed costs
// (every goroutine's stack is scanned) whatever the heap's size. While the
// live heap is under half the floor, Start raises GOGC just enough that
// the goal is the floor; above that, GOGC is what it was, so a server
// holding a large heap uses the memory it would without this package.
package heapfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// maxPercent bounds the GOGC set for a tiny live heap.
const maxPercent = 5000

var started sync.Once

// Start keeps the heap goal at floor bytes at least, from now on; calls
// after the first do nothing. It does nothing when garbage collection is
// off (GOGC=off).
func Start(floor uint64) {
	started.Do(func() {
		base := debug.SetGCPercent(100)
		debug.SetGCPercent(base)
		if base <= 0 {
			return
		}
		t := &tuner{floor: floor, base: base, cur: base, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		t.arm()
	})
}

type tuner struct {
	floor     uint64
	base, cur int
	sample    []metrics.Sample
}

// arm asks to be called after the next collection: the cleanup of an
// object nothing refers to runs once a cycle has found it garbage.
func (t *tuner) arm() {
	runtime.AddCleanup(new(sentinel), func(t *tuner) {
		t.adjust()
		t.arm()
	}, t)
}

// sentinel is too large for the tiny allocator, whose blocks are shared
// and so may never be found garbage.
type sentinel [32]byte

func (t *tuner) adjust() {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	p := Percent(t.sample[0].Value.Uint64(), t.floor, t.base)
	if p != t.cur {
		t.cur = p
		debug.SetGCPercent(p)
	}
}

// Percent is the GOGC that puts the heap goal for a live heap of live
// bytes at floor, and never below base.
func Percent(live, floor uint64, base int) int {
	if live == 0 {
		return max(base, maxPercent)
	}
	if live*uint64(100+base)/100 >= floor {
		return base
	}
	return max(base, min(maxPercent, int((floor-live)*100/live)))
}
