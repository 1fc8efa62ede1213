package fleet

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// One audit row per client per minute, saying how many were held back.
func TestDenials_OnePerClientPerMinuteCountingTheRest(t *testing.T) {
	d := newDenials()
	t0 := time.Now()
	audited, _ := d.admit("monitor-a", t0)
	assert.True(t, audited, "the first refusal")
	for i := range 3 {
		audited, _ = d.admit("monitor-a", t0.Add(time.Duration(i+1)*time.Second))
		assert.False(t, audited, "within the minute")
	}
	audited, _ = d.admit("monitor-b", t0.Add(time.Second))
	assert.True(t, audited, "another client has its own minute")
	audited, suppressed := d.admit("monitor-a", t0.Add(denialAuditEvery))
	assert.True(t, audited, "a minute on")
	assert.Equal(t, 3, suppressed)
}

// A watcher that reconnects under a new client id each second, refused
// each time, for 200,000 seconds: the table keeps about the last
// minute's clients, not every one it has seen.
func TestDenials_NewClientIDsDoNotGrowTheTableWithoutBound(t *testing.T) {
	d := newDenials()
	t0 := time.Now()
	most := 0
	for i := range 200_000 {
		audited, _ := d.admit(fmt.Sprint("monitor-", i), t0.Add(time.Duration(i)*time.Second))
		assert.True(t, audited)
		most = max(most, len(d.win))
	}
	assert.LessOrEqual(t, most, deniedMin+1, "the table at its largest")
}
