package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
)

// fleet is a running server with an administrator and a tenant.
type fleet struct {
	env    *testenv.Env
	srv    *testenv.ServerProcess
	token  string
	tenant string
	pool   *pgxpool.Pool
}

func newFleet(t *testing.T, serverArgs ...string) *fleet {
	t.Helper()
	env := testenv.NewEnv(t)
	f := &fleet{env: env, srv: env.StartServer(t, nil, serverArgs...), tenant: "acme"}
	f.token = env.Operator(t, "admin")
	_, stderr, err := testenv.CLI(t, f.srv.APIURL, f.token, "tenant", "create", f.tenant)
	require.NoError(t, err, stderr)
	pool, err := pgxpool.New(context.Background(), env.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	f.pool = pool
	return f
}

func (f *fleet) cli(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	return testenv.CLI(t, f.srv.APIURL, f.token, args...)
}

// enrollmentToken mints a one-time token for an agent called name.
func (f *fleet) enrollmentToken(t *testing.T, name string) string {
	t.Helper()
	out, stderr, err := f.cli(t, "agent", "enroll", "--tenant", f.tenant, "--name", name)
	require.NoError(t, err, stderr)
	require.True(t, strings.HasPrefix(out, "argus_enr_"), out)
	return out
}

// enroll runs argus-agent enroll for a new agent and returns its state.
func (f *fleet) enroll(t *testing.T, name string) (string, agent.State) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", f.srv.APIURL, "--token", f.enrollmentToken(t, name), "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	return dir, st
}

func (f *fleet) agent(t *testing.T, id string) apiclient.Agent {
	t.Helper()
	var a apiclient.Agent
	testenv.CLIJSON(t, f.srv.APIURL, f.token, &a, "agent", "show", id)
	return a
}

func (f *fleet) auditCount(t *testing.T, action, agentID string) (logRows, eventRows int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, f.pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = $1 AND agent_id = $2", action, agentID).Scan(&logRows))
	require.NoError(t, f.pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action = $1 AND payload->>'agent_id' = $2", action, agentID).Scan(&eventRows))
	return
}

func TestAgent_EnrollRunOnlineThenOffline(t *testing.T) {
	f := newFleet(t)
	dir, st := f.enroll(t, "cam-gw-1")

	fi, err := os.Stat(filepath.Join(dir, "enrollment.json"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "credentials are private to the agent's user")
	assert.Equal(t, f.srv.MQTTURL, st.BrokerURL)
	assert.NotEmpty(t, st.SigningPublicKey)

	logRows, eventRows := f.auditCount(t, "agent.enroll", st.AgentID)
	assert.Equal(t, 1, logRows, "enrollment writes one audit_log row")
	assert.Equal(t, 1, eventRows, "and one events row")

	assert.False(t, f.agent(t, st.AgentID).Online)
	a := testenv.StartAgent(t, dir)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.agent(t, st.AgentID).Online }, "agent online")

	// The manifest arrives on connect and a heartbeat follows.
	testenv.Eventually(t, 10*time.Second, func() bool {
		got := f.agent(t, st.AgentID)
		return len(got.Manifest) > 0 && got.LastSeenAt != nil && got.Version != ""
	}, "manifest and heartbeat recorded")
	shown := f.agent(t, st.AgentID)
	var manifest struct {
		AgentID  string   `json:"agent_id"`
		Commands []string `json:"commands"`
	}
	require.NoError(t, json.Unmarshal(shown.Manifest, &manifest))
	assert.Equal(t, st.AgentID, manifest.AgentID)
	assert.Equal(t, agent.SupportedCommands, manifest.Commands)

	// Outbound only: the running agent has no listening socket at all.
	assert.Empty(t, listeningSockets(t, a.Cmd.Process.Pid), "the agent never listens")
	assert.NotEmpty(t, listeningSockets(t, f.srv.Cmd.Process.Pid), "the check does see the server's listeners")

	var list struct {
		Agents []apiclient.Agent `json:"agents"`
	}
	testenv.CLIJSON(t, f.srv.APIURL, f.token, &list, "agent", "list", "--tenant", f.tenant)
	require.Len(t, list.Agents, 1)
	assert.True(t, list.Agents[0].Online)

	a.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return !f.agent(t, st.AgentID).Online }, "agent offline after it stops")
}

func TestEnroll_TokenRefusals(t *testing.T) {
	f := newFleet(t)
	enroll := func(token string) string {
		_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", f.srv.APIURL, "--token", token, "--state-dir", t.TempDir())
		require.Error(t, err)
		return stderr
	}

	used := f.enrollmentToken(t, "once")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", f.srv.APIURL, "--token", used, "--state-dir", t.TempDir())
	require.NoError(t, err, stderr)
	assert.Contains(t, enroll(used), "enrollment_token_used")

	expired := f.enrollmentToken(t, "late")
	_, err = f.pool.Exec(context.Background(),
		"UPDATE enrollment_tokens SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day' WHERE agent_name = 'late'")
	require.NoError(t, err)
	assert.Contains(t, enroll(expired), "enrollment_token_expired")

	assert.Contains(t, enroll("argus_enr_aaaaaaaaaaaaaaaa_"+strings.Repeat("0", 64)), "enrollment_token_invalid")
	assert.Contains(t, enroll("made-up"), "enrollment_token_invalid")

	var denied int
	require.NoError(t, f.pool.QueryRow(context.Background(),
		"SELECT count(*) FROM audit_log WHERE action = 'agent.enroll' AND outcome = 'denied'").Scan(&denied))
	assert.Equal(t, 4, denied, "each refused attempt is audited")
}

func TestRevoke_DisconnectsAtOnceAndAgentCannotReconnect(t *testing.T) {
	f := newFleet(t)
	dir, st := f.enroll(t, "cam-gw-1")
	a := testenv.StartAgent(t, dir)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.agent(t, st.AgentID).Online }, "agent online")
	mark := a.LineCount()

	_, stderr, err := f.cli(t, "agent", "revoke", st.AgentID)
	require.Error(t, err, "a reason is required")
	assert.Contains(t, stderr, "--reason")

	start := time.Now()
	_, stderr, err = f.cli(t, "agent", "revoke", st.AgentID, "--reason", "host decommissioned")
	require.NoError(t, err, stderr)
	mark = a.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
	assert.Less(t, time.Since(start), time.Second+500*time.Millisecond, "the live client is dropped at once")

	// It keeps trying, and is refused every time.
	a.WaitLog(t, mark, "cannot connect to broker", 2, 20*time.Second)
	got := f.agent(t, st.AgentID)
	assert.False(t, got.Online)
	assert.NotNil(t, got.RevokedAt)
	assert.Equal(t, "host decommissioned", got.RevokeReason)

	logRows, eventRows := f.auditCount(t, "agent.revoke", st.AgentID)
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, eventRows)
}

func TestRevoke_AgentSaysItsEnrollmentWasRefusedAndBacksOff(t *testing.T) {
	f := newFleet(t)
	dir, st := f.enroll(t, "cam-gw-1")
	a := testenv.StartAgent(t, dir) // reconnect-max-backoff 2s
	testenv.Eventually(t, 10*time.Second, func() bool { return f.agent(t, st.AgentID).Online }, "agent online")
	mark := a.LineCount()

	_, stderr, err := f.cli(t, "agent", "revoke", st.AgentID, "--reason", "host decommissioned")
	require.NoError(t, err, stderr)

	// Not only the broker's "bad username or password": what it means.
	mark = a.WaitLog(t, mark, "enrollment refused or revoked", 1, 20*time.Second)
	// After repeated refusals it waits minutes, not the 2 s cap it uses
	// for a server that is merely away.
	a.WaitLog(t, mark, "retrying every 5-10 minutes", 1, 30*time.Second)
	attempts := func() int { return strings.Count(a.Logs(), "cannot connect to broker") }
	before := attempts()
	time.Sleep(7 * time.Second)
	assert.Equal(t, before, attempts(), "no attempt within 7 s of the long back-off starting (the normal cap is 2 s)")

	// The tenant sees it locally.
	out, stderr, err := testenv.Run(t, nil, "argus-agent", "status", "--state-dir", dir)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "enrollment refused or revoked")
	assert.Contains(t, out, "argus-agent enroll")
	assert.Contains(t, out, "connected: false")
	var js struct {
		Refused *struct {
			Since    time.Time `json:"since"`
			Attempts int       `json:"attempts"`
			Reason   string    `json:"reason"`
		} `json:"refused"`
	}
	out, stderr, err = testenv.Run(t, nil, "argus-agent", "status", "--state-dir", dir, "--json")
	require.NoError(t, err, stderr)
	require.NoError(t, json.Unmarshal([]byte(out), &js), out)
	require.NotNil(t, js.Refused, out)
	assert.GreaterOrEqual(t, js.Refused.Attempts, 3)
	assert.Contains(t, js.Refused.Reason, "bad username or password")
}

func TestAgent_ReconnectsAfterServerRestart(t *testing.T) {
	port := testenv.FreeAddr(t)
	f := newFleet(t, "--mqtt-ws-addr", port)
	dir, st := f.enroll(t, "cam-gw-1")
	a := testenv.StartAgent(t, dir)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.agent(t, st.AgentID).Online }, "agent online")
	mark := a.LineCount()

	// Killed, not stopped: no goodbye to anyone.
	require.NoError(t, f.srv.Cmd.Process.Signal(syscall.SIGKILL))
	<-f.srv.Done()
	mark = a.WaitLog(t, mark, "disconnected from broker", 1, 10*time.Second)

	f.srv = f.env.StartServer(t, nil, "--mqtt-ws-addr", port)
	a.WaitLog(t, mark, "connected to broker", 1, 30*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.agent(t, st.AgentID).Online }, "agent online again")
}
