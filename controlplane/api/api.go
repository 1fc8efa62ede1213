// Package api is the control plane's HTTP API: JSON over HTTP under /v1,
// plus /healthz and /readyz.
//
// Every /v1 route passes through authentication (a bearer operator token)
// and a scope check, except enrollment (an enrollment token), the viewer's
// routes (a tenant viewer token) and the control plane's public key.
package api

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/migrations"
)

// Version is reported by /healthz and whoami; set by the server at build.
var Version = "dev"

// Server holds the API's dependencies.
type Server struct {
	Pool         *pgxpool.Pool
	Operators    *operators.Store
	Tenants      *tenants.Store
	Agents       *agents.Store
	AgentControl AgentControl
	Sessions     *sessions.Manager
	// AgentStale reports an agent connected but silent (two heartbeats
	// missed); nil means none is.
	AgentStale func(agentID string) bool
	// Fenced, when set, reports that this node holds no valid lease in
	// its cluster: it is not ready (a load balancer sends calls to the
	// others).
	Fenced func() bool
	// Draining, when set, reports that this node is handing its agents
	// to the others before it stops: it is not ready either.
	Draining func() bool
	// Signing, when set, says why this node cannot sign what agents
	// accept (nil while it can): it is not ready either.
	Signing func() error
	Gate    Gate
	// BrokerURL and SigningPublicKey are handed to agents at enrollment.
	BrokerURL        string
	SigningPublicKey string
	// SigningKey signs session transcripts; its public half is
	// SigningPublicKey's.
	SigningKey func() ed25519.PrivateKey
	// BrowserMQTTURL is the broker's WebSocket URL as a browser reaches it.
	BrowserMQTTURL string
	// EnrollPerMinute bounds enrollment attempts per client address (10).
	EnrollPerMinute int
	// Node is this server's node id, kept with the audit verifications it runs.
	Node string
	// ClusterNodes lists the cluster's nodes for GET /v1/cluster.
	ClusterNodes func(ctx context.Context) ([]cluster.Node, error)
	Log          *slog.Logger

	enrollLimit       *limiter
	gateAuditLimit    *limiter
	refusalAuditLimit *limiter
	tenantAuditLimit  *limiter
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	per := s.EnrollPerMinute
	if per <= 0 {
		per = 10
	}
	s.enrollLimit = newLimiter(per, time.Minute)
	s.gateAuditLimit = newLimiter(60, time.Minute)
	s.refusalAuditLimit = newLimiter(60, time.Minute)
	s.tenantAuditLimit = newLimiter(tenantAuditPerMinute, time.Minute)
	scoped := func(scope operators.Scope, h http.HandlerFunc) http.Handler { return s.requireScope(scope, h) }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /v1/whoami", s.authenticated(http.HandlerFunc(s.whoami)))
	mux.Handle("GET /v1/operators", scoped(operators.ScopeOperatorAdmin, s.listOperators))
	mux.Handle("POST /v1/operators/{operator}/tokens", scoped(operators.ScopeOperatorAdmin, s.createOperatorToken))
	mux.Handle("GET /v1/operators/{operator}/tokens", scoped(operators.ScopeOperatorAdmin, s.listOperatorTokens))
	mux.Handle("POST /v1/operators/{operator}/tokens/{id}/revoke", scoped(operators.ScopeOperatorAdmin, s.revokeOperatorToken))
	mux.Handle("POST /v1/operators/{operator}/disable", scoped(operators.ScopeOperatorAdmin, s.disableOperator))
	mux.Handle("POST /v1/operators/{operator}/enable", scoped(operators.ScopeOperatorAdmin, s.enableOperator))

	mux.Handle("POST /v1/tenants", scoped(operators.ScopeTenantAdmin, s.createTenant))
	mux.Handle("GET /v1/tenants", scoped(operators.ScopeTenantAdmin, s.listTenants))
	mux.Handle("GET /v1/tenants/{tenant}", scoped(operators.ScopeTenantAdmin, s.getTenant))

	mux.Handle("POST /v1/enrollment-tokens", scoped(operators.ScopeAgentAdmin, s.createEnrollmentToken))
	mux.HandleFunc("POST /v1/enroll", s.enroll)
	mux.Handle("GET /v1/agents", scoped(operators.ScopeAgentAdmin, s.listAgents))
	mux.Handle("GET /v1/agents/{agent}", scoped(operators.ScopeAgentAdmin, s.getAgent))
	mux.Handle("POST /v1/agents/{agent}/revoke", scoped(operators.ScopeAgentAdmin, s.revokeAgent))

	mux.Handle("POST /v1/tenants/{tenant}/consent", scoped(operators.ScopeTenantAdmin, s.recordConsent))
	mux.Handle("GET /v1/tenants/{tenant}/consents", scoped(operators.ScopeTenantAdmin, s.listConsents))
	mux.Handle("POST /v1/tenants/{tenant}/consent/withdraw", scoped(operators.ScopeTenantAdmin, s.withdrawConsent))
	mux.Handle("POST /v1/tenants/{tenant}/arm", scoped(operators.ScopeTenantArm, s.arm))
	// Disarming is never harder than arming.
	mux.Handle("POST /v1/tenants/{tenant}/disarm", s.requireAnyScope(s.disarm, operators.ScopeTenantArm, operators.ScopeTenantAdmin))

	mux.Handle("POST /v1/tenants/{tenant}/viewer-tokens", scoped(operators.ScopeTenantAdmin, s.createViewerToken))
	mux.Handle("GET /v1/tenants/{tenant}/viewer-tokens", scoped(operators.ScopeTenantAdmin, s.listViewerTokens))
	mux.Handle("POST /v1/tenants/{tenant}/viewer-tokens/{id}/revoke", scoped(operators.ScopeTenantAdmin, s.revokeViewerToken))
	mux.Handle("POST /v1/tenants/{tenant}/tokens", scoped(operators.ScopeTenantAdmin, s.createTenantToken))
	mux.Handle("GET /v1/tenants/{tenant}/tokens", scoped(operators.ScopeTenantAdmin, s.listTenantTokens))
	mux.Handle("POST /v1/tenants/{tenant}/tokens/{id}/revoke", scoped(operators.ScopeTenantAdmin, s.revokeViewerToken))
	mux.Handle("POST /v1/tenants/{tenant}/approval", scoped(operators.ScopeTenantAdmin, s.setApproval))
	mux.Handle("GET /v1/tenants/{tenant}/approval", scoped(operators.ScopeTenantAdmin, s.getApproval))
	// A tenant token opens these and nothing else; none reaches a
	// command, a patch or another tenant.
	mux.HandleFunc("GET /v1/viewer", s.viewer)
	mux.HandleFunc("POST /v1/viewer/sessions/{session}/end", s.viewerEndSession)
	mux.HandleFunc("GET /v1/viewer/approvals", s.viewerApprovals)
	mux.HandleFunc("POST /v1/viewer/sessions/{session}/approve", s.viewerApprove)
	mux.HandleFunc("POST /v1/viewer/sessions/{session}/deny", s.viewerDeny)

	mux.Handle("GET /v1/audit", scoped(operators.ScopeAuditRead, s.listAudit))
	mux.Handle("POST /v1/audit/verify", scoped(operators.ScopeAuditRead, s.verifyAudit))
	mux.HandleFunc("GET /v1/sessions/{session}/transcript", s.operatorTranscript)
	mux.HandleFunc("GET /v1/viewer/sessions/{session}/transcript", s.viewerTranscript)
	mux.HandleFunc("GET /v1/signing-key", s.signingKey)
	mux.HandleFunc("GET /v1/cluster", s.clusterStatus)

	mux.Handle("POST /v1/support/sessions", s.gate(http.HandlerFunc(s.activate)))
	mux.Handle("POST /v1/support/sessions/{session}/commands", s.gate(http.HandlerFunc(s.command)))
	mux.Handle("POST /v1/support/sessions/{session}/patch", s.gate(http.HandlerFunc(s.applyPatch)))
	mux.Handle("GET /v1/support/sessions", s.supportAuth(s.listSessions))
	mux.Handle("GET /v1/support/sessions/{session}", s.supportAuth(s.getSession))
	mux.Handle("GET /v1/support/sessions/{session}/approval", s.supportAuth(s.supportApproval))
	mux.Handle("POST /v1/support/sessions/{session}/deactivate", s.supportAuth(s.deactivate))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierror.Write(w, apierror.New(http.StatusNotFound, apierror.CodeNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path))
	})
	return s.traced(s.recoverer(mux))
}

// traced starts a server span for each request, continuing the caller's
// trace (argusctl sends its context in the traceparent header), and logs
// the request with its trace id.
func (s *Server) traced(next http.Handler) http.Handler {
	tracer := otel.Tracer("argus/api")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, r.Method+" "+r.URL.Path, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		defer span.End()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		r = r.WithContext(ctx)
		next.ServeHTTP(rec, r)
		if r.Pattern != "" {
			span.SetName(r.Pattern)
		}
		span.SetAttributes(attribute.Int("http.response.status_code", rec.status))
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && r.URL.Path != "/metrics" {
			s.Log.InfoContext(ctx, "api request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start).String())
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": Version})
}

// CodeSigningKeyMissing is /readyz on a node that signs nothing agents
// accept: the key set was rotated and retired, and the new key's file is
// not in this node's key directory.
const CodeSigningKeyMissing = sessions.CodeSigningKeyMissing

// readyz is ready when the database answers and holds the latest schema.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	v, err := migrations.Current(ctx, s.Pool)
	if err != nil {
		s.Log.Warn("readiness: database unreachable", "err", err)
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "database unreachable"))
		return
	}
	if s.Signing != nil && s.Signing() != nil {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, CodeSigningKeyMissing,
			"this node holds the private half of no live command-signing key: copy the current key's file into its key directory (see its log)"))
		return
	}
	if s.Fenced != nil && s.Fenced() {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "this node is fenced: it cannot renew its lease in the cluster"))
		return
	}
	if s.Draining != nil && s.Draining() {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "this node is draining: its agents are moving to the other nodes"))
		return
	}
	if latest := migrations.Latest(); v != latest {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "database schema is not current"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "schema_version": v})
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, principalFrom(r.Context()))
}

func (s *Server) listOperators(w http.ResponseWriter, r *http.Request) {
	list, err := s.Operators.List(r.Context())
	if err != nil {
		s.Log.Error("list operators", "err", err)
		apierror.Write(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"operators": list})
}

// recoverer turns a handler panic into a 500 with the JSON error shape.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				apierror.Write(w, nil)
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
