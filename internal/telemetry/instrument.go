package telemetry

import (
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// Instrument is a metric instrument made from the global meter provider
// on first use, and made again should the provider change (a test process
// sets one up for each server it starts). Looking it up again on every use
// costs a meter and instrument lookup, with their allocations, each time.
type Instrument[T any] struct {
	meter string
	make  func(metric.Meter) (T, error)
	cur   atomic.Pointer[made[T]]
}

type made[T any] struct {
	mp metric.MeterProvider
	v  T
}

// NewInstrument returns an Instrument that mk makes from the named meter.
func NewInstrument[T any](meter string, mk func(metric.Meter) (T, error)) *Instrument[T] {
	return &Instrument[T]{meter: meter, make: mk}
}

// Get returns the instrument for the current provider. An instrument the
// provider refuses is its no-op one (mk's result with the error), as
// when it is looked up each time.
func (i *Instrument[T]) Get() T {
	mp := otel.GetMeterProvider()
	if c := i.cur.Load(); c != nil && c.mp == mp {
		return c.v
	}
	v, _ := i.make(mp.Meter(i.meter))
	i.cur.Store(&made[T]{mp: mp, v: v})
	return v
}
