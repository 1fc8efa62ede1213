package telemetry

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
