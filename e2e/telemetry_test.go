package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
	"github.com/argus-remote/argus/topics"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

func TestTelemetry_OneTraceFromAPIToAgentAndMetricsMove(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	env := testenv.NewEnv(t)
	srv := testenv.StartInProcessWith(t, env, map[string]any{
		"remote-support-enabled": true, "remote-support-operator-cidrs": "127.0.0.1/32", "ops-token": opsToken,
	}, func(c *server.Config) { c.SpanProcessor = spans })
	ctx := context.Background()
	pool := srv.Database().Pool
	_, token, err := operators.NewStore(pool).Create(ctx, "alice", operators.NewToken{Scopes: []operators.Scope{
		operators.ScopeRemoteSupport, operators.ScopeTenantAdmin, operators.ScopeTenantArm, operators.ScopeAgentAdmin}})
	require.NoError(t, err)
	api := &apiclient.Client{BaseURL: srv.APIURL(), Token: token, OpsToken: opsToken}
	require.NoError(t, api.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	require.NoError(t, api.Do(ctx, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "D", "signed_by": "J"}, nil))
	require.NoError(t, api.Do(ctx, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "r"}, nil))

	// An agent in this process, so its spans land in the same recorder.
	store := agents.NewStore(pool)
	tok, err := store.CreateEnrollmentToken(ctx, "acme", "cam", 0, audit.Entry{Actor: "test"})
	require.NoError(t, err)
	e, err := store.Enroll(ctx, tok.Token, "127.0.0.1")
	require.NoError(t, err)
	pubKey := (&inProcess{env: env, srv: srv}).signingKey(t)
	a, err := agent.New(agent.Config{StateDir: t.TempDir(), HeartbeatInterval: time.Second, ReconnectMax: 2 * time.Second},
		agent.State{AgentID: e.AgentID, Secret: e.Secret, BrokerURL: srv.MQTTURL(), SigningPublicKey: topics.EncodePublicKey(pubKey)},
		slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(actx) }()
	t.Cleanup(func() { stop(); <-done })
	testenv.Eventually(t, 5*time.Second, func() bool {
		var got agents.Agent
		return api.Do(ctx, "GET", "/v1/agents/"+e.AgentID, nil, &got) == nil && got.Online
	}, "agent online")

	var act struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	require.NoError(t, api.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": e.AgentID, "reason": "r"}, &act))

	before := scrape(t, srv.APIURL())
	// The operator's side of the trace, as argusctl starts it.
	cctx, root := otel.Tracer("argusctl").Start(ctx, "argusctl support ping")
	c := *api
	c.SessionToken = act.Token
	var res apiclient.CommandResult
	require.NoError(t, c.Do(cctx, "POST", "/v1/support/sessions/"+act.Session.ID+"/commands", map[string]string{"name": "ping"}, &res))
	root.End()
	require.Equal(t, "ok", res.Status)

	traceID := root.SpanContext().TraceID()
	names := map[string]bool{}
	testenv.Eventually(t, 5*time.Second, func() bool {
		names = map[string]bool{}
		for _, s := range spans.Ended() {
			if s.SpanContext().TraceID() == traceID {
				names[s.Name()] = true
			}
		}
		return names["agent.command"] && names["support.command"]
	}, "the agent's span joins the trace")
	assert.True(t, names["POST /v1/support/sessions/{session}/commands"], "the API span: %v", names)
	assert.True(t, names["support.command"], "the control plane span")
	assert.True(t, names["command.exchange ping"], "the exchange with the agent")
	assert.True(t, names["agent.command"], "the agent's span")

	after := scrape(t, srv.APIURL())
	series := `argus_commands_total{name="ping",outcome="succeeded"}`
	assert.Equal(t, metricValue(t, before, series)+1, metricValue(t, after, series), "the command counter moved")
	assert.Greater(t, metricValue(t, after, `argus_audit_writes_total{outcome="success"}`), metricValue(t, before, `argus_audit_writes_total{outcome="success"}`))
	assert.Equal(t, 1.0, metricValue(t, after, "argus_agents_connected"))
	assert.Equal(t, 1.0, metricValue(t, after, "argus_sessions_live"))
	assert.Contains(t, after, `argus_command_duration_seconds_bucket{name="ping"`)
	assert.Contains(t, after, `argus_activations_total{code="ok"} 1`)
}
