package broker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPace_BatchesMakeTheRate(t *testing.T) {
	for _, tc := range []struct {
		perSecond int
		batch     int
		every     time.Duration
	}{
		{0, 0, 0},
		{-1, 0, 0},
		{2000, 100, 50 * time.Millisecond},
		{30, 1, time.Second / 30},
		{10, 1, 100 * time.Millisecond},
	} {
		batch, every := pace(tc.perSecond)
		require.Equal(t, tc.batch, batch, "%d/s", tc.perSecond)
		require.Equal(t, tc.every, every, "%d/s", tc.perSecond)
	}
}
