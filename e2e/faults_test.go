package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/pgcluster"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

func TestAgent_GoesDormantAtExpiryWithServerStopped(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, proc := s.runAgent(t, "cam-gw-1")
	sess, _ := s.activate(t, agentID, "3s")
	mark := proc.WaitLog(t, 0, "REMOTE SUPPORT SESSION ACTIVE", 1, 5*time.Second)

	require.NoError(t, s.srv.Close(context.Background()))
	mark = proc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)

	proc.WaitLog(t, mark, "REMOTE SUPPORT SESSION ENDED", 1, 10*time.Second)
	st, err := agent.ReadStatus(dir)
	require.NoError(t, err)
	assert.Equal(t, topics.StateDormant, st.State, "dormant on its own clock, no server needed")
	assert.False(t, time.Now().Before(sess.ExpiresAt), "not before expires_at")
}

func TestActivate_AgentThatRefusesLeavesNoLiveSession(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": "acme", "name": "no-support"}, &tok))
	dir := filepath.Join(t.TempDir(), "a")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", s.srv.APIURL(), "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	// The tenant's own configuration says no.
	proc := testenv.StartAgent(t, dir, "ARGUS_AGENT_REMOTE_SUPPORT_DISABLED=true")
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool { return s.online(st.AgentID) }, "online")

	err = s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": st.AgentID, "reason": "x"}, nil)
	assert.Equal(t, "agent_did_not_acknowledge", apiCode(err))
	var list struct {
		Sessions []apiclient.Session `json:"sessions"`
	}
	require.NoError(t, s.do(t, "GET", "/v1/support/sessions", nil, &list))
	require.Len(t, list.Sessions, 1)
	assert.Equal(t, "agent_did_not_acknowledge", list.Sessions[0].EndReason)
	assert.False(t, s.srv.Policy().Active(st.AgentID))
}

// binaryFleet is the real server binary with remote support on, for fault tests.
type binaryFleet struct {
	*fleet
	api  *apiclient.Client
	args []string
}

func newBinaryFleet(t *testing.T, env *testenv.Env, extra ...string) *binaryFleet {
	t.Helper()
	args := append([]string{"--mqtt-ws-addr", testenv.FreeAddr(t), "--remote-support-operator-cidrs", "127.0.0.0/8"}, extra...)
	srvEnv := []string{"REMOTE_SUPPORT_ENABLED=true", "ARGUS_OPS_TOKEN=" + opsToken}
	f := &fleet{env: env, tenant: "acme"}
	f.srv = env.StartServer(t, srvEnv, args...)
	f.token = env.Operator(t, "admin")
	b := &binaryFleet{fleet: f, api: &apiclient.Client{BaseURL: f.srv.APIURL, Token: f.token, OpsToken: opsToken}, args: args}
	ctx := context.Background()
	require.NoError(t, b.api.Do(ctx, "POST", "/v1/tenants", map[string]string{"name": "acme"}, nil))
	require.NoError(t, b.api.Do(ctx, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-1", "signed_by": "Jane"}, nil))
	require.NoError(t, b.api.Do(ctx, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-1"}, nil))
	return b
}

func (b *binaryFleet) restart(t *testing.T) {
	t.Helper()
	b.srv = b.env.StartServer(t, []string{"REMOTE_SUPPORT_ENABLED=true", "ARGUS_OPS_TOKEN=" + opsToken}, b.args...)
	b.api.BaseURL = b.srv.APIURL
}

func (b *binaryFleet) session(t *testing.T, id string) apiclient.Session {
	t.Helper()
	var s apiclient.Session
	require.NoError(t, b.api.Do(context.Background(), "GET", "/v1/support/sessions/"+id, nil, &s))
	return s
}

func TestServerKilledMidActivation_DatabaseAndAgentsAgreeAfterRestart(t *testing.T) {
	env := testenv.NewEnv(t)
	b := newBinaryFleet(t, env)
	pool, err := pgxpool.New(context.Background(), env.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	b.pool = pool

	dirA, stA := b.enroll(t, "cam-a")
	dirB, stB := b.enroll(t, "cam-b")
	procA, procB := testenv.StartAgent(t, dirA), testenv.StartAgent(t, dirB)
	testenv.Eventually(t, 10*time.Second, func() bool { return b.agent(t, stA.AgentID).Online && b.agent(t, stB.AgentID).Online }, "both online")

	var resA struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, b.api.Do(context.Background(), "POST", "/v1/support/sessions",
		map[string]string{"tenant": "acme", "agent": stA.AgentID, "reason": "INC-1"}, &resA))

	// Agent B freezes, so its activation hangs waiting for the ack; the
	// server is killed while it waits.
	require.NoError(t, procB.Cmd.Process.Signal(syscall.SIGSTOP))
	pending := *b.api
	hung := make(chan error, 1)
	go func() {
		hung <- pending.Do(context.Background(), "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": stB.AgentID, "reason": "INC-2"}, nil)
	}()
	var sessB string
	testenv.Eventually(t, 5*time.Second, func() bool {
		return pool.QueryRow(context.Background(), "SELECT id FROM support_sessions WHERE agent_id = $1", stB.AgentID).Scan(&sessB) == nil
	}, "B's session row committed")
	require.NoError(t, b.srv.Cmd.Process.Signal(syscall.SIGKILL))
	<-b.srv.Done()
	require.Error(t, <-hung, "the activation died with the server")
	require.NoError(t, procB.Cmd.Process.Signal(syscall.SIGCONT))

	// Every session row came with its audit rows, even this one.
	var logRows, events int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_log WHERE session_id = $1 AND action = 'support.activate'", sessB).Scan(&logRows))
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM events WHERE payload->>'session_id' = $1 AND action = 'support.activate'", sessB).Scan(&events))
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)

	markA, markB := procA.LineCount(), procB.LineCount()
	b.restart(t)
	procA.WaitLog(t, markA, "connected to broker", 1, 30*time.Second)
	procB.WaitLog(t, markB, "connected to broker", 1, 30*time.Second)

	// B's activation never completed: the restarted server ended it, and B is dormant.
	gotB := b.session(t, sessB)
	assert.Equal(t, "agent_did_not_acknowledge", gotB.EndReason)
	testenv.Eventually(t, 10*time.Second, func() bool {
		st, err := agent.ReadStatus(dirB)
		return err == nil && st.State == topics.StateDormant && st.Connected
	}, "B dormant, as the database says")

	// A's acknowledged session survives the restart, on both sides.
	gotA := b.session(t, resA.Session.ID)
	assert.True(t, gotA.Active)
	testenv.Eventually(t, 10*time.Second, func() bool {
		st, err := agent.ReadStatus(dirA)
		return err == nil && st.State == topics.StateActive && st.SessionID == resA.Session.ID && st.Connected
	}, "A still active, as the database says")
}

// freeze stops (SIGSTOP) a cluster's postmaster and every process it has
// started, so the database neither answers nor dies; the returned func
// lets them run again. The server's supervision restarts a postmaster
// that dies, so a database down for a while is one that hangs.
func freeze(t *testing.T, pgDir string) func() {
	t.Helper()
	postmaster := pgcluster.PID(pgDir)
	require.NotZero(t, postmaster)
	pids := []int{postmaster}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read from its ')'.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(postmaster) {
			pid, _ := strconv.Atoi(strings.Fields(string(b))[0])
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	}
	thawed := false
	thaw := func() {
		if thawed {
			return
		}
		thawed = true
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	return thaw
}

func TestPostgresHangsUnderLiveSession(t *testing.T) {
	// A private cluster the test can freeze under the server.
	dataDir := testenv.TempDir(t)
	env := &testenv.Env{DataDir: dataDir}
	b := newBinaryFleet(t, env)
	dir, st := b.enroll(t, "cam-a")
	proc := testenv.StartAgent(t, dir)
	testenv.Eventually(t, 10*time.Second, func() bool { return b.agent(t, st.AgentID).Online }, "online")

	var res struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, b.api.Do(context.Background(), "POST", "/v1/support/sessions",
		map[string]string{"tenant": "acme", "agent": st.AgentID, "reason": "INC-1", "ttl": "4s"}, &res))
	mark := proc.WaitLog(t, 0, "REMOTE SUPPORT SESSION ACTIVE", 1, 5*time.Second)

	ctx := context.Background()
	thaw := freeze(t, filepath.Join(dataDir, "postgres"))
	// Hung across the session's end: the agent ends it on its own clock.
	proc.WaitLog(t, mark, "REMOTE SUPPORT SESSION ENDED", 1, 10*time.Second)
	thaw()
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dataDir, "postgres")})
	require.NoError(t, err)

	// The server carries on by itself and ends the session, audited.
	testenv.Eventually(t, 15*time.Second, func() bool {
		var s apiclient.Session
		return b.api.Do(ctx, "GET", "/v1/support/sessions/"+res.Session.ID, nil, &s) == nil && s.EndedAt != nil
	}, "session ended after PostgreSQL came back")
	got := b.session(t, res.Session.ID)
	assert.Equal(t, "expired", got.EndReason)

	pool, err := pgxpool.New(ctx, pg.ConnString("argus"))
	require.NoError(t, err)
	defer pool.Close()
	for _, action := range []string{"support.activate", "support.session.end"} {
		var logRows, events int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE session_id = $1 AND action = $2", res.Session.ID, action).Scan(&logRows))
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE payload->>'session_id' = $1 AND action = $2", res.Session.ID, action).Scan(&events))
		assert.Equal(t, 1, logRows, action)
		assert.Equal(t, 1, events, action)
	}
	var gaps int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM (SELECT seq - lag(seq) OVER (ORDER BY seq) AS d FROM events) x WHERE d <> 1").Scan(&gaps))
	assert.Zero(t, gaps, "the event chain has no gap")
}

func TestRemoteSupportTurnedOff_EndsLeftoverSessionsAtStart(t *testing.T) {
	env := testenv.NewEnv(t)
	b := newBinaryFleet(t, env)
	dir, st := b.enroll(t, "cam-a")
	proc := testenv.StartAgent(t, dir)
	testenv.Eventually(t, 10*time.Second, func() bool { return b.agent(t, st.AgentID).Online }, "online")
	var res struct {
		Session apiclient.Session `json:"session"`
	}
	require.NoError(t, b.api.Do(context.Background(), "POST", "/v1/support/sessions",
		map[string]string{"tenant": "acme", "agent": st.AgentID, "reason": "INC-1"}, &res))
	mark := proc.WaitLog(t, 0, "REMOTE SUPPORT SESSION ACTIVE", 1, 5*time.Second)

	b.srv.Stop(t)
	b.srv = env.StartServer(t, []string{"REMOTE_SUPPORT_ENABLED=false"}, b.args...)
	proc.WaitLog(t, mark, "REMOTE SUPPORT SESSION ENDED", 1, 30*time.Second)

	pool, err := pgxpool.New(context.Background(), env.DatabaseURL)
	require.NoError(t, err)
	defer pool.Close()
	var reason string
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT end_reason FROM support_sessions WHERE id = $1", res.Session.ID).Scan(&reason))
	assert.Equal(t, "deactivated", reason)
}

// procsNaming lists the live (not zombie) processes whose command line
// contains s, with their parent's pid, from /proc.
func procsNaming(t *testing.T, s string) map[int]int {
	t.Helper()
	out := map[int]int{}
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(cmdline, []byte(s)) {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after it.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out[pid] = ppid
	}
	return out
}

func TestAgentKilledMidFrame_FFmpegDiesWithIt(t *testing.T) {
	testenv.NeedTool(t, "ffmpeg", "ffmpeg")
	// A camera that accepts the connection and never says a word. Each
	// connection is handed to the test: it is how the test knows ffmpeg
	// is mid-frame, and its close is how it knows ffmpeg is gone.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			conns <- c
		}
	}()
	// A name no other process on the machine has in its command line.
	source := "argus-hang-" + uuid.NewString()
	config := filepath.Join(t.TempDir(), "agent.yaml")
	// The camera timeout is far beyond the test: only the agent's death
	// may end ffmpeg here.
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf("cameras:\n  hang: http://%s/%s.mjpeg\ncamera-timeout: 2m\n", ln.Addr(), source)), 0o600))

	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, proc := s.runConfiguredAgent(t, "cam-gw-1", config)
	sess, token := s.activate(t, agentID, "")

	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan struct{})
	t.Cleanup(func() { cancel(); <-sent })
	go func() {
		defer close(sent)
		c := *s.api
		c.SessionToken = token
		_ = c.Do(ctx, "POST", "/v1/support/sessions/"+sess.ID+"/commands",
			map[string]any{"name": "camera_view", "args": map[string]string{"camera": "hang"}}, nil)
	}()
	var conn net.Conn
	select {
	case conn = <-conns:
	case <-time.After(30 * time.Second):
		t.Fatal("ffmpeg never connected to the camera")
	}
	ffmpegs := procsNaming(t, source)
	require.Len(t, ffmpegs, 1, "one ffmpeg reads the camera")
	agentPID := proc.Cmd.Process.Pid
	for pid, ppid := range ffmpegs {
		assert.Equal(t, agentPID, ppid, "ffmpeg is the agent's child")
		// Should it outlive the agent, the test ends it (by its pid).
		t.Cleanup(func() {
			if len(procsNaming(t, source)) > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		})
	}

	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGKILL))
	<-proc.Done()
	killed := time.Now()
	// The kernel closes ffmpeg's connection when ffmpeg dies: read what it
	// sent (its request) up to the end.
	require.NoError(t, conn.SetReadDeadline(killed.Add(2*time.Second)))
	_, err = io.Copy(io.Discard, conn)
	require.NoError(t, err, "ffmpeg still holds the camera's connection 2 s after its agent died")
	assert.Empty(t, procsNaming(t, source), "no ffmpeg left")
}
