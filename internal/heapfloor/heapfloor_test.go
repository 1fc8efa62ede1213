package heapfloor

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		live, floor uint64
		base, want  int
	}{
		{live: 4 * mib, floor: 64 * mib, base: 100, want: 1500}, // 4 MiB × 16 = 64 MiB
		{live: 16 * mib, floor: 64 * mib, base: 100, want: 300},
		{live: 32 * mib, floor: 64 * mib, base: 100, want: 100}, // twice the live heap is the floor
		{live: 100 * mib, floor: 64 * mib, base: 100, want: 100},
		{live: 40 * mib, floor: 64 * mib, base: 200, want: 200}, // never below the configured GOGC
		{live: 1024, floor: 64 * mib, base: 100, want: maxPercent},
		{live: 0, floor: 64 * mib, base: 100, want: maxPercent},
	} {
		assert.Equal(t, tc.want, Percent(tc.live, tc.floor, tc.base), "live %d base %d", tc.live, tc.base)
	}
}

// After a collection the tuner has set GOGC for the live heap: a test
// binary's heap is far below a 1 GiB floor, so GOGC goes up.
func TestStart_RaisesGOGCAfterACollection(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	Start(1 << 30)
	for range 3 { // a cleanup runs after the cycle that finds its object garbage
		runtime.GC()
	}
	deadline := 100
	var now int
	for ; deadline > 0; deadline-- {
		now = debug.SetGCPercent(-1)
		debug.SetGCPercent(now)
		if now > 100 {
			break
		}
		runtime.GC()
	}
	assert.Greater(t, now, 100, "GOGC raised for a small live heap")
}
