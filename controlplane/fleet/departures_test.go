package fleet

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Past goneMax, departures older than goneFor are dropped; newer ones
// are kept however many there are.
func TestDepartures_DropsOnlyTheOldPastTheBound(t *testing.T) {
	d := newDepartures()
	t0 := time.Now()
	for i := range goneMax {
		d.left(fmt.Sprint("old-", i), t0)
	}
	later := t0.Add(goneFor + time.Second)
	for i := range goneMax {
		d.left(fmt.Sprint("new-", i), later)
	}
	_, old := d.since("old-1")
	at, recent := d.since("new-1")
	assert.False(t, old, "older than goneFor, past the bound: dropped")
	assert.True(t, recent)
	assert.Equal(t, later, at)
	assert.Len(t, d.at, goneMax, "every recent departure kept")

	d.back("new-1")
	_, away := d.since("new-1")
	assert.False(t, away, "back: no longer away")
}

// BenchmarkDepartures_Drain is one departure of a drain that sends
// 30,000 agents away within goneFor: past goneMax, each departure scanned
// every entry before.
func BenchmarkDepartures_Drain(b *testing.B) {
	ids := make([]string, 30_000)
	for i := range ids {
		ids[i] = fmt.Sprint("agent-", i)
	}
	t0 := time.Now()
	for b.Loop() {
		d := newDepartures()
		for i, id := range ids {
			d.left(id, t0.Add(time.Duration(i)*time.Millisecond))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/departure")
}
