// Package telemetry sets up OpenTelemetry for the three programs: traces
// (exported over OTLP only when an endpoint is configured), metrics
// (served in Prometheus format at /metrics by the server), W3C trace
// context propagation, and slog lines that carry their trace id.
//
// Nothing leaves the process unless an OTLP endpoint is configured.
package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Options configure Setup.
type Options struct {
	Service string
	Version string
	// OTLPEndpoint, when set, receives traces over OTLP/HTTP
	// (host:port, or a URL).
	OTLPEndpoint string
	// Metrics serves metrics in Prometheus format (the server does).
	Metrics bool
	// SpanProcessor, when set, also receives every span (tests use an
	// in-memory exporter).
	SpanProcessor sdktrace.SpanProcessor
}

// Telemetry is the running setup.
type Telemetry struct {
	tp       *sdktrace.TracerProvider
	mp       *sdkmetric.MeterProvider
	registry *prometheus.Registry
}

// Setup installs global tracer and meter providers and the propagator.
func Setup(ctx context.Context, o Options) (*Telemetry, error) {
	res := resource.NewSchemaless(semconv.ServiceName(o.Service), semconv.ServiceVersion(o.Version))
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if o.OTLPEndpoint != "" {
		exp, err := otlptracehttp.New(ctx, endpointOption(o.OTLPEndpoint))
		if err != nil {
			return nil, err
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
	}
	if o.SpanProcessor != nil {
		topts = append(topts, sdktrace.WithSpanProcessor(o.SpanProcessor))
	}
	if o.OTLPEndpoint == "" && o.SpanProcessor == nil {
		// Nothing would receive a span: do not record them. Spans still
		// get ids, which logs and the trace context sent on carry.
		topts = append(topts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	t := &Telemetry{tp: sdktrace.NewTracerProvider(topts...)}
	otel.SetTracerProvider(t.tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	if o.Metrics {
		t.registry = prometheus.NewRegistry()
		// The Go runtime's own figures (goroutines, heap) beside ours.
		t.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		exp, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
		if err != nil {
			return nil, err
		}
		t.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
		otel.SetMeterProvider(t.mp)
	}
	return t, nil
}

func endpointOption(ep string) otlptracehttp.Option {
	if len(ep) > 7 && (ep[:7] == "http://" || (len(ep) > 8 && ep[:8] == "https://")) {
		return otlptracehttp.WithEndpointURL(ep)
	}
	return otlptracehttp.WithEndpoint(ep)
}

// MetricsHandler serves /metrics (404 when metrics are off).
func (t *Telemetry) MetricsHandler() http.Handler {
	if t == nil || t.registry == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	var errs []error
	errs = append(errs, t.tp.Shutdown(ctx))
	if t.mp != nil {
		errs = append(errs, t.mp.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// LogHandler wraps h so that a record logged with a context holding a
// span carries trace_id and span_id.
func LogHandler(h slog.Handler) slog.Handler { return traceHandler{h} }

type traceHandler struct{ slog.Handler }

func (t traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return t.Handler.Handle(ctx, r)
}

func (t traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{t.Handler.WithAttrs(as)}
}
func (t traceHandler) WithGroup(g string) slog.Handler { return traceHandler{t.Handler.WithGroup(g)} }
