package telemetry

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestSetup_RecordsSpansOnlyWhenSomethingReceivesThem(t *testing.T) {
	ctx := context.Background()
	tel, err := Setup(ctx, Options{Service: "test"})
	require.NoError(t, err)
	_, span := tel.tp.Tracer("t").Start(ctx, "nobody listens")
	assert.False(t, span.IsRecording(), "no exporter, no processor: not recorded")
	assert.True(t, span.SpanContext().IsValid(), "but it has ids, for logs and the context sent on")
	span.End()
	require.NoError(t, tel.Shutdown(ctx))

	rec := tracetest.NewSpanRecorder()
	tel, err = Setup(ctx, Options{Service: "test", SpanProcessor: sdktrace.SpanProcessor(rec)})
	require.NoError(t, err)
	_, span = tel.tp.Tracer("t").Start(ctx, "recorded")
	assert.True(t, span.IsRecording())
	span.End()
	assert.Len(t, rec.Ended(), 1)
	require.NoError(t, tel.Shutdown(ctx))
}

func TestInstrument_FollowsTheGlobalProvider(t *testing.T) {
	ctx := context.Background()
	inst := NewInstrument("argus/test", func(m metric.Meter) (metric.Int64Counter, error) {
		return m.Int64Counter("argus_test_things")
	})
	scrape := func(tel *Telemetry) string {
		rec := httptest.NewRecorder()
		tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}

	first, err := Setup(ctx, Options{Service: "test", Metrics: true})
	require.NoError(t, err)
	defer first.Shutdown(ctx)
	c := inst.Get()
	assert.Equal(t, c, inst.Get(), "made once for a provider")
	c.Add(ctx, 1)
	assert.Contains(t, scrape(first), "argus_test_things_total 1")

	second, err := Setup(ctx, Options{Service: "test", Metrics: true})
	require.NoError(t, err)
	defer second.Shutdown(ctx)
	inst.Get().Add(ctx, 2)
	assert.Contains(t, scrape(second), "argus_test_things_total 2", "made again for the new provider")
	assert.Contains(t, scrape(first), "argus_test_things_total 1")
}
