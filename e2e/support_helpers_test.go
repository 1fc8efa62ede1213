package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
	"github.com/argus-remote/argus/topics"
)

const opsToken = "ops-token-for-tests-0123456789abcdef"

// supportEnv is an in-process server with remote support on, an operator
// holding every scope, and a tenant.
type supportEnv struct {
	*inProcess
	api    *apiclient.Client
	tenant string
	key    ed25519.PrivateKey

	acks chan topics.ActivationAckMsg
	mu   sync.Mutex
	res  []topics.ResultMsg
}

func newSupportEnv(t *testing.T, overrides map[string]any) *supportEnv {
	t.Helper()
	return newSupportEnvWith(t, overrides, nil)
}

// newSupportEnvWith is newSupportEnv with a last say over the server's
// configuration (its test hooks).
func newSupportEnvWith(t *testing.T, overrides map[string]any, mutate func(*server.Config)) *supportEnv {
	t.Helper()
	env := testenv.NewEnv(t)
	o := map[string]any{
		"remote-support-enabled":        true,
		"remote-support-operator-cidrs": "127.0.0.1/32",
		"ops-token":                     opsToken,
	}
	for k, v := range overrides {
		o[k] = v
	}
	srv := testenv.StartInProcessWith(t, env, o, mutate)
	ctx := context.Background()
	pool := srv.Database().Pool
	_, token, err := operators.NewStore(pool).Create(ctx, "alice", operators.NewToken{Scopes: []operators.Scope{
		operators.ScopeRemoteSupport, operators.ScopeTenantArm, operators.ScopeTenantAdmin, operators.ScopeAgentAdmin,
		operators.ScopeAuditRead, operators.ScopeOperatorAdmin, operators.ScopeMonitor,
	}})
	require.NoError(t, err)
	key, err := signing.LoadOrCreate(filepath.Join(env.DataDir, "command-signing.key"))
	require.NoError(t, err)
	s := &supportEnv{
		inProcess: &inProcess{env: env, srv: srv},
		api:       &apiclient.Client{BaseURL: srv.APIURL(), Token: token, OpsToken: opsToken},
		tenant:    "acme", key: key, acks: make(chan topics.ActivationAckMsg, 64),
	}
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	brk := srv.Broker().Server()
	require.NoError(t, brk.Subscribe(topics.AgentFilter(topics.ActivationAck), 90, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var a topics.ActivationAckMsg
		if json.Unmarshal(pk.Payload, &a) == nil {
			s.acks <- a
		}
	}))
	require.NoError(t, brk.Subscribe(topics.AgentFilter(topics.Results), 91, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		var r topics.ResultMsg
		if json.Unmarshal(pk.Payload, &r) == nil {
			s.mu.Lock()
			s.res = append(s.res, r)
			s.mu.Unlock()
		}
	}))
	return s
}

func (s *supportEnv) do(t *testing.T, method, path string, body, out any) error {
	t.Helper()
	return s.api.Do(context.Background(), method, path, body, out)
}

func (s *supportEnv) consentAndArm(t *testing.T) {
	t.Helper()
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane Roe"}, nil))
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-1"}, nil))
}

// runAgent enrolls an agent through the API and runs the real binary.
func (s *supportEnv) runAgent(t *testing.T, name string, extraEnv ...string) (string, string, *testenv.AgentProcess) {
	t.Helper()
	var tok agents.EnrollmentToken
	require.NoError(t, s.do(t, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": s.tenant, "name": name}, &tok))
	dir := filepath.Join(t.TempDir(), name)
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", s.srv.APIURL(), "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	proc := testenv.StartAgent(t, dir, extraEnv...)
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool { return s.online(st.AgentID) }, "agent online")
	return st.AgentID, dir, proc
}

func (s *supportEnv) online(agentID string) bool {
	var a agents.Agent
	return s.api.Do(context.Background(), "GET", "/v1/agents/"+agentID, nil, &a) == nil && a.Online
}

func (s *supportEnv) activate(t *testing.T, agentID string, ttl string) (apiclient.Session, string) {
	t.Helper()
	var res struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	body := map[string]string{"tenant": s.tenant, "agent": agentID, "reason": "INC-1: stream drops"}
	if ttl != "" {
		body["ttl"] = ttl
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions", body, &res))
	require.True(t, strings.HasPrefix(res.Token, "argus_ses_"))
	return res.Session, res.Token
}

func (s *supportEnv) command(t *testing.T, sessionID, token, name string) (apiclient.CommandResult, error) {
	t.Helper()
	c := *s.api
	c.SessionToken = token
	var res apiclient.CommandResult
	err := c.Do(context.Background(), "POST", "/v1/support/sessions/"+sessionID+"/commands", map[string]string{"name": name}, &res)
	return res, err
}

func (s *supportEnv) session(t *testing.T, id string) apiclient.Session {
	t.Helper()
	var sess apiclient.Session
	require.NoError(t, s.do(t, "GET", "/v1/support/sessions/"+id, nil, &sess))
	return sess
}

// assertClosed checks an ended session from every side: the session row,
// the broker (ACL closed, subscription gone, a command sent now is not
// delivered), the agent (dormant), and the tenant's indicator.
func (s *supportEnv) assertClosed(t *testing.T, sess apiclient.Session, dir string, proc *testenv.AgentProcess, reason string) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() bool { return s.session(t, sess.ID).EndedAt != nil }, "session ended")
	got := s.session(t, sess.ID)
	assert.Equal(t, reason, got.EndReason)
	assert.False(t, got.Active)

	// The broker steps follow the end's commit: the row may say ended a
	// moment before they have run.
	id, _ := topics.ParseAgentID(sess.AgentID)
	testenv.Eventually(t, 5*time.Second, func() bool { return !s.srv.Policy().Active(sess.AgentID) }, "ACL closed")
	testenv.Eventually(t, 5*time.Second, func() bool {
		cl, ok := s.srv.Broker().Server().Clients.Get(sess.AgentID)
		if !ok {
			return true
		}
		_, subscribed := cl.State.Subscriptions.Get(id.Topic(topics.Commands))
		return !subscribed
	}, "commands subscription dropped")

	// The agent is dormant by its own account.
	testenv.Eventually(t, 5*time.Second, func() bool {
		st, err := agent.ReadStatus(dir)
		return err == nil && st.State == topics.StateDormant
	}, "agent status dormant")

	// A validly signed command for the old session, published now, is not
	// delivered: a dormant activation sent after it is acknowledged with no
	// refusal before it.
	mark := proc.LineCount()
	cmd := topics.CommandMsg{V: topics.Version, ID: "after-end-" + sess.ID, SessionID: sess.ID, TenantID: sess.TenantID, AgentID: sess.AgentID,
		Name: "ping", IssuedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Minute).UTC()}
	payload, err := topics.Sign(s.key, topics.PurposeCommand, cmd)
	require.NoError(t, err)
	require.NoError(t, s.srv.Broker().Publish(id.Topic(topics.Commands), payload, false, 1, nil))
	sentinel := topics.ActivationMsg{V: topics.Version, AgentID: sess.AgentID, State: topics.StateDormant, SessionID: "sentinel-" + sess.ID, IssuedAt: time.Now().UTC()}
	sp, err := topics.Sign(s.key, topics.PurposeActivation, sentinel)
	require.NoError(t, err)
	require.NoError(t, s.srv.Broker().Publish(id.Topic(topics.Activation), sp, true, 1, nil))
	s.awaitAck(t, sentinel.SessionID)
	assert.NotContains(t, strings.Join(strings.Split(proc.Logs(), "\n")[mark:], "\n"), "refused command", "the command was not delivered")
	s.mu.Lock()
	for _, r := range s.res {
		assert.NotEqual(t, cmd.ID, r.CommandID, "the agent never saw the command")
	}
	s.mu.Unlock()

	testenv.Eventually(t, 5*time.Second, func() bool {
		var ts struct {
			Active bool `json:"active"`
		}
		s.readTenantStatus(t, sess.TenantID, &ts)
		return !ts.Active
	}, "tenant indicator says no session")
}

func (s *supportEnv) awaitAck(t *testing.T, sessionID string) topics.ActivationAckMsg {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case a := <-s.acks:
			if a.SessionID == sessionID {
				return a
			}
		case <-deadline:
			t.Fatalf("no ack for %s", sessionID)
		}
	}
}

// readTenantStatus reads the tenant's retained indicator.
func (s *supportEnv) readTenantStatus(t *testing.T, tenantID string, v any) {
	t.Helper()
	tid, err := topics.ParseTenantID(tenantID)
	require.NoError(t, err)
	got := make(chan []byte, 1)
	brk := s.srv.Broker().Server()
	subID := int(time.Now().UnixNano() % 100000)
	require.NoError(t, brk.Subscribe(tid.RemoteSupport(), subID, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		select {
		case got <- pk.Payload:
		default:
		}
	}))
	defer func() { _ = brk.Unsubscribe(tid.RemoteSupport(), subID) }()
	select {
	case b := <-got:
		require.NoError(t, json.Unmarshal(b, v))
	case <-time.After(5 * time.Second):
		t.Fatal("no retained tenant status")
	}
}

// auditPair counts the audit_log and events rows of one action.
func (s *supportEnv) auditPair(t *testing.T, action, sessionID string) (int, int) {
	t.Helper()
	ctx := context.Background()
	pool := s.srv.Database().Pool
	var a, e int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = $1 AND session_id = $2", action, sessionID).Scan(&a))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action = $1 AND payload->>'session_id' = $2", action, sessionID).Scan(&e))
	return a, e
}

// clientFrom returns an HTTP client whose connections come from addr (a
// loopback address such as 127.0.0.2).
func clientFrom(addr string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 30 * time.Second}
}
