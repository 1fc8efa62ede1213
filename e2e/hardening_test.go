package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
	"github.com/argus-remote/argus/topics"
)

// fakeAgent is a raw MQTT client holding an enrolled agent's credentials:
// an agent that does exactly, and only, what the test says.
type fakeAgent struct {
	e  agents.Enrollment
	id topics.AgentID
	c  *mqtttest.Client
}

func (s *supportEnv) fakeAgent(t *testing.T, name string) *fakeAgent {
	t.Helper()
	e := s.enrollDirect(t, name)
	id, err := topics.ParseAgentID(e.AgentID)
	require.NoError(t, err)
	f := &fakeAgent{e: e, id: id, c: s.dialAgent(t, e)}
	t.Cleanup(func() { _ = f.c.Disconnect(&paho.Disconnect{}) })
	testenv.Eventually(t, 5*time.Second, func() bool { return s.online(e.AgentID) }, "fake agent online")
	return f
}

// publish sends v on the agent's own topic of kind and waits for the
// broker's acknowledgement, by which time the server has handled it.
func (f *fakeAgent) publish(t *testing.T, kind topics.Kind, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	f.publishRaw(t, kind, b)
}

func (f *fakeAgent) publishRaw(t *testing.T, kind topics.Kind, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := f.c.Publish(ctx, &paho.Publish{Topic: f.id.Topic(kind), QoS: 1, Payload: b})
	require.NoError(t, err)
}

func (f *fakeAgent) subscribe(t *testing.T, kind topics.Kind) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := f.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f.id.Topic(kind), QoS: 1}}})
	require.NoError(t, err)
	require.Less(t, sa.Reasons[0], byte(0x80), "subscribe %s", kind)
}

// next opens the next signed message on the agent's topic of kind.
func (f *fakeAgent) next(t *testing.T, s *supportEnv, kind topics.Kind, purpose string, v any, match func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case pk := <-f.c.Received:
			if pk.Topic != f.id.Topic(kind) {
				continue
			}
			if topics.Open(s.key.Public().(ed25519.PublicKey), purpose, pk.Payload, topics.MaxEnvelope, v) == nil && match() {
				return
			}
		case <-deadline:
			t.Fatalf("no %s message", kind)
		}
	}
}

// activeFake opens a session on a fake agent that acknowledges it and
// takes up its commands.
func (s *supportEnv) activeFake(t *testing.T, name string) (*fakeAgent, activation) {
	t.Helper()
	f := s.fakeAgent(t, name)
	f.subscribe(t, topics.Activation)
	done := s.activateAsync(t, f.e.AgentID)
	var act topics.ActivationMsg
	f.next(t, s, topics.Activation, topics.PurposeActivation, &act, func() bool { return act.State == topics.StateActive })
	f.subscribe(t, topics.Commands)
	f.publish(t, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: f.e.AgentID, SessionID: act.SessionID, State: topics.StateActive})
	got := <-done
	require.Empty(t, got.code)
	return f, got
}

type commandAnswer struct {
	res  apiclient.CommandResult
	code string
	err  *apiclient.Error
	took time.Duration
}

func (s *supportEnv) commandAsync(t *testing.T, a activation, name string) <-chan commandAnswer {
	out := make(chan commandAnswer, 1)
	go func() {
		start := time.Now()
		res, err := s.command(t, a.session.ID, a.token, name)
		ans := commandAnswer{res: res, code: apiCode(err), took: time.Since(start)}
		asAPIError(err, &ans.err)
		out <- ans
	}()
	return out
}

// activateAsync asks for a session and returns a channel with the API's
// answer: the session, or the error code.
func (s *supportEnv) activateAsync(t *testing.T, agentID string) <-chan activation {
	out := make(chan activation, 1)
	go func() {
		var res struct {
			Session apiclient.Session `json:"session"`
			Token   string            `json:"token"`
		}
		err := s.api.Do(context.Background(), "POST", "/v1/support/sessions",
			map[string]string{"tenant": s.tenant, "agent": agentID, "reason": "INC-7"}, &res)
		out <- activation{session: res.Session, token: res.Token, code: apiCode(err)}
	}()
	return out
}

type activation struct {
	session apiclient.Session
	token   string
	code    string
}

// deniedAs counts the ACL-style refusals audited for an agent in both
// trails, with what they say was refused.
func (s *supportEnv) deniedAs(t *testing.T, agentID, why string) (int, int) {
	t.Helper()
	ctx := context.Background()
	pool := s.srv.Database().Pool
	var a, e int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'broker.acl_denied'
		AND actor = $1 AND detail->>'why' = $2`, "agent:"+agentID, why).Scan(&a))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'broker.acl_denied'
		AND payload->>'actor' = $1 AND payload->'detail'->>'why' = $2`, "agent:"+agentID, why).Scan(&e))
	return a, e
}

// TestAck_FromAnotherAgentIsRefusedAndAudited guards against one agent
// acknowledging another's session: B never answers its activation, A
// publishes an ack for B's session on its own ack topic, and B's
// activation still fails for want of B's own ack.
func TestAck_FromAnotherAgentIsRefusedAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	a, b := s.fakeAgent(t, "gw-a"), s.fakeAgent(t, "gw-b")
	b.subscribe(t, topics.Activation)

	done := s.activateAsync(t, b.e.AgentID)
	var act topics.ActivationMsg
	b.next(t, s, topics.Activation, topics.PurposeActivation, &act, func() bool { return act.State == topics.StateActive })
	a.publish(t, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: a.e.AgentID, SessionID: act.SessionID, State: topics.StateActive})

	got := <-done
	assert.Equal(t, "agent_did_not_acknowledge", got.code, "A's ack does not count for B's session")
	sess := s.session(t, act.SessionID)
	assert.Nil(t, sess.AckedAt)
	assert.NotNil(t, sess.EndedAt)
	testenv.Eventually(t, 5*time.Second, func() bool {
		logRows, events := s.deniedAs(t, a.e.AgentID, "ack for another agent's session")
		return logRows == 1 && events == 1
	}, "the forged ack is audited in both trails")
}

// TestResult_FromAnotherAgentIsRefusedAndAudited guards against one agent
// answering a command sent to another: A's result for B's command is
// refused, and the command completes with B's own answer.
func TestResult_FromAnotherAgentIsRefusedAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	a := s.fakeAgent(t, "gw-a")
	b, got := s.activeFake(t, "gw-b")
	answered := s.commandAsync(t, got, "ping")
	var cmd topics.CommandMsg
	b.next(t, s, topics.Commands, topics.PurposeCommand, &cmd, func() bool { return cmd.Name == "ping" })
	for _, forged := range []topics.ResultMsg{
		{V: topics.Version, CommandID: cmd.ID, SessionID: cmd.SessionID, AgentID: a.e.AgentID, Status: topics.ResultOK, Data: json.RawMessage(`{"forged":1}`)},
		{V: topics.Version, CommandID: cmd.ID, SessionID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8", AgentID: b.e.AgentID, Status: topics.ResultOK, Data: json.RawMessage(`{"forged":2}`)},
	} {
		if forged.AgentID == a.e.AgentID {
			a.publish(t, topics.Results, forged)
		} else {
			b.publish(t, topics.Results, forged) // B's own, but for another session
		}
	}
	b.publish(t, topics.Results, topics.ResultMsg{V: topics.Version, CommandID: cmd.ID, SessionID: cmd.SessionID, AgentID: b.e.AgentID,
		Status: topics.ResultOK, Data: json.RawMessage(`{"honest":true}`)})
	ans := <-answered
	require.Empty(t, ans.code)
	assert.JSONEq(t, `{"honest":true}`, string(ans.res.Data))
	for _, id := range []string{a.e.AgentID, b.e.AgentID} {
		testenv.Eventually(t, 5*time.Second, func() bool {
			logRows, events := s.deniedAs(t, id, "result for a command sent to another agent or session")
			return logRows == 1 && events == 1
		}, "the forged result is audited in both trails")
	}
}

// TestCommand_NonCanonicalSessionIDEndsWithTheSession guards against
// session ids in other spellings (upper case, braces, urn:uuid:, no
// hyphens) outliving the end: they are one session, audited under its one
// id, and refused the moment it ends.
func TestCommand_NonCanonicalSessionIDEndsWithTheSession(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	sess, token := s.activate(t, agentID, "")
	spellings := []string{strings.ToUpper(sess.ID), "{" + sess.ID + "}", "urn:uuid:" + sess.ID, strings.ReplaceAll(sess.ID, "-", "")}
	for _, id := range spellings {
		res, err := s.command(t, id, token, "ping")
		require.NoError(t, err, id)
		assert.Equal(t, sess.ID, res.SessionID, id)
	}
	require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+strings.ToUpper(sess.ID)+"/deactivate", nil, nil))
	for _, id := range spellings {
		_, err := s.command(t, id, token, "ping")
		assert.Equal(t, "session_ended", apiCode(err), id)
	}
	// Both trails hold the one spelling, so they reconcile.
	var odd int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM events WHERE payload ? 'session_id' AND payload->>'session_id' <> $1`, sess.ID).Scan(&odd))
	assert.Zero(t, odd, "every event names the session in its canonical form")
	var rep struct {
		Clean bool `json:"clean"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/audit/verify", map[string]string{"since": "1h"}, &rep))
	assert.True(t, rep.Clean)
}

// TestActivate_EndDuringActivationLeavesItClosed guards against an
// activation reopening a session that ended between its commit and its
// broker steps: a disarm lands in that window, and the session stays
// closed on every side.
func TestActivate_EndDuringActivationLeavesItClosed(t *testing.T) {
	var s *supportEnv
	var first sync.Once
	disarmed := make(chan string, 1)
	s = newSupportEnvWith(t, nil, func(c *server.Config) {
		c.AfterActivationCommit = func(sessionID string) {
			first.Do(func() {
				assert.NoError(t, s.do(t, "POST", "/v1/tenants/acme/disarm", map[string]string{"reason": "INC-5: site closed"}, nil))
				disarmed <- sessionID
			})
		}
	})
	s.consentAndArm(t)
	agentID, dir, proc := s.runAgent(t, "cam-gw-1")
	got := <-s.activateAsync(t, agentID)
	assert.Equal(t, "session_ended", got.code)
	sessionID := <-disarmed
	sess := s.session(t, sessionID)
	s.assertClosed(t, sess, dir, proc, "tenant_disarmed")

	// Nothing of it is left to make the agent busy.
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-5"}, nil))
	next, _ := s.activate(t, agentID, "")
	assert.NotEqual(t, sessionID, next.ID)
}

// TestRevoke_ClientGivesUpAfterCommit guards against a revocation that
// committed but never reached the broker because its caller gave up
// before the response was read back: the broker steps follow the commit
// whatever the caller does.
func TestRevoke_ClientGivesUpAfterCommit(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, _ := s.runAgent(t, "cam-gw-1")
	otherID, _, _ := s.runAgent(t, "cam-gw-2")
	s.activate(t, agentID, "")
	st, err := agent.LoadState(dir)
	require.NoError(t, err)

	// The answer is read after the commit, and that read waits on this lock.
	ctx := context.Background()
	lock, err := s.srv.Database().Pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = lock.Rollback(ctx) })
	_, err = lock.Exec(ctx, "LOCK TABLE agent_presence IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)

	impatient := *s.api
	impatient.HTTP = &http.Client{Timeout: time.Second}
	err = impatient.Do(ctx, "POST", "/v1/agents/"+agentID+"/revoke", map[string]string{"reason": "host stolen"}, nil)
	require.Error(t, err, "the caller gave up")
	gaveUp := time.Now()

	testenv.Eventually(t, 2*time.Second, func() bool {
		_, connected := s.srv.Broker().Server().Clients.Get(agentID)
		return !connected && !s.srv.Policy().Active(agentID)
	}, "agent disconnected and its commands topic closed")
	assert.Less(t, time.Since(gaveUp), 2*time.Second)
	_, ack, err := mqtttest.Dial(t, s.srv.MQTTURL(), mqtttest.Options{ClientID: agentID, Username: agentID, Password: st.Secret})
	assert.Error(t, err, "a revoked agent cannot reconnect")
	if ack != nil {
		assert.NotZero(t, ack.ReasonCode)
	}
	// The tenant's other agent can still be reached.
	s.activate(t, otherID, "")
}

// TestStateCheck_RepairsWhatTheBrokerMissed guards the periodic check:
// ends and revocations committed with no broker step at all (by SQL, as
// a lost step leaves them) are applied on the broker within a check, and
// counted.
func TestStateCheck_RepairsWhatTheBrokerMissed(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, dir, proc := s.runAgent(t, "cam-gw-1")
	revokedID, revokedDir, _ := s.runAgent(t, "cam-gw-2")
	sess, _ := s.activate(t, agentID, "")
	ctx := context.Background()
	pool := s.srv.Database().Pool
	_, err := pool.Exec(ctx, "UPDATE support_sessions SET ended_at = now(), end_reason = 'deactivated' WHERE id = $1", sess.ID)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "UPDATE agents SET revoked_at = now(), revoke_reason = 'by hand' WHERE id = $1", revokedID)
	require.NoError(t, err)

	testenv.Eventually(t, 5*time.Second, func() bool { return !s.srv.Policy().Active(agentID) }, "commands topic closed by the check")
	s.assertClosed(t, sess, dir, proc, "deactivated")
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, connected := s.srv.Broker().Server().Clients.Get(revokedID)
		return !connected
	}, "revoked agent disconnected")
	st, err := agent.LoadState(revokedDir)
	require.NoError(t, err)
	_, _, err = mqtttest.Dial(t, s.srv.MQTTURL(), mqtttest.Options{ClientID: revokedID, Username: revokedID, Password: st.Secret})
	assert.Error(t, err, "a revoked agent cannot reconnect")

	metrics := scrape(t, s.srv.APIURL())
	for _, kind := range []string{"live_session", "credential", "revoked_connected"} {
		assert.Contains(t, metrics, `argus_state_repairs_total{kind="`+kind+`"`, kind)
	}
	// Nothing is left to make the agent busy.
	s.activate(t, agentID, "")
}

// deniedWith counts the refusals of an action audited with code in both
// trails.
func (s *supportEnv) deniedWith(t *testing.T, action, code string) (int, int) {
	t.Helper()
	ctx := context.Background()
	pool := s.srv.Database().Pool
	var a, e int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = $1 AND outcome = 'denied'
		AND detail->>'code' = $2`, action, code).Scan(&a))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = $1 AND payload->>'outcome' = 'denied'
		AND payload->'detail'->>'code' = $2`, action, code).Scan(&e))
	return a, e
}

// TestBadInput_RefusedWithACodeAndAudited guards against hostile text
// turning audited refusals into unaudited 500s: NUL bytes and over-long
// reasons from the operator's side get a 4xx with a stable code, and each
// refusal is in both trails.
func TestBadInput_RefusedWithACodeAndAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	activate := func(reason string) string {
		return apiCode(s.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": agentID, "reason": reason}, nil))
	}
	assert.Equal(t, "value_too_long", activate(strings.Repeat("r", 1100)))
	assert.Equal(t, "invalid_text", activate("INC-1\x00; DROP"))
	assert.Equal(t, "invalid_text", apiCode(s.do(t, "POST", "/v1/support/sessions",
		map[string]string{"tenant": "acme\x00", "agent": agentID, "reason": "INC-1"}, nil)))
	for code, want := range map[string]int{"value_too_long": 1, "invalid_text": 2} {
		logRows, events := s.deniedWith(t, "support.activate", code)
		assert.Equal(t, want, logRows, code)
		assert.Equal(t, want, events, code)
	}

	sess, token := s.activate(t, agentID, "")
	c := *s.api
	c.SessionToken = token
	run := func(name string, args any) string {
		return apiCode(c.Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/commands",
			map[string]any{"name": name, "args": args}, nil))
	}
	assert.Equal(t, "invalid_text", run("read_file", map[string]string{"path": "config.yaml\x00.png"}))
	assert.Equal(t, "invalid_text", run("ping\x00", nil))
	logRows, events := s.deniedWith(t, "support.command", "invalid_text")
	assert.Equal(t, 2, logRows)
	assert.Equal(t, 2, events)
	res, err := s.command(t, sess.ID, token, "ping")
	require.NoError(t, err, "the session still works")
	assert.Equal(t, "ok", res.Status)
}

// TestAgentResult_MalformedIsRecordedAsBadResult guards against an agent
// erasing a command's completion with bytes the database refuses: a NUL
// in its digest, its error code or its capabilities is recorded as
// bad_result, in both trails, and the operator gets a 200 saying so.
func TestAgentResult_MalformedIsRecordedAsBadResult(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	b, got := s.activeFake(t, "gw-b")

	for name, answer := range map[string]string{
		"read_file":        `"status":"ok","data":{"bytes":3,"sha256":"ab\u0000cd","content":"YWJj"}`,
		"tail_log":         `"status":"error","error":{"code":"no\u0000such","message":"x"}`,
		"agent_info":       `"status":"refused","error":{"code":"nope","message":"bad \u0000 message"}`,
		"get_capabilities": `"status":"ok","data":{"cameras":["lobby\u0000"]}`,
		"ping":             `"status":"ok","data":{"bytes":-1}`,
	} {
		t.Run(name, func(t *testing.T) {
			out := s.commandAsync(t, got, name)
			var cmd topics.CommandMsg
			b.next(t, s, topics.Commands, topics.PurposeCommand, &cmd, func() bool { return cmd.Name == name })
			b.publishRaw(t, topics.Results, []byte(`{"v":1,"command_id":"`+cmd.ID+`","session_id":"`+cmd.SessionID+
				`","agent_id":"`+b.e.AgentID+`",`+answer+`}`))
			a := <-out
			require.Empty(t, a.code)
			assert.Equal(t, "error", a.res.Status)
			require.NotNil(t, a.res.Error)
			assert.Equal(t, "bad_result", a.res.Error.Code)

			ctx := context.Background()
			pool := s.srv.Database().Pool
			var status, code string
			require.NoError(t, pool.QueryRow(ctx, "SELECT status, error_code FROM commands WHERE id = $1", cmd.ID).Scan(&status, &code))
			assert.Equal(t, "failed", status)
			assert.Equal(t, "bad_result", code)
			var logRows, events int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.command.completed'
				AND detail->>'command_id' = $1 AND detail->>'code' = 'bad_result'`, cmd.ID).Scan(&logRows))
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'support.command.completed'
				AND payload->'detail'->>'command_id' = $1`, cmd.ID).Scan(&events))
			assert.Equal(t, 1, logRows)
			assert.Equal(t, 1, events)
		})
	}
}

// TestGate_ProbeWithNULAndBadUTF8IsAudited guards against a refusal that
// leaves no row because its text is not storable: a gate probe with %00
// and an invalid UTF-8 byte in its path is refused and audited in both
// trails, the bytes spelled the one documented way (NUL as U+2400,
// an invalid byte as U+FFFD).
func TestGate_ProbeWithNULAndBadUTF8IsAudited(t *testing.T) {
	s := newSupportEnv(t, nil)
	probe := apiclient.Client{BaseURL: s.api.BaseURL, Token: s.api.Token} // no ops token
	err := probe.Do(context.Background(), "POST", "/v1/support/sessions/x%00y%FFz/commands", map[string]string{"name": "ping"}, nil)
	assert.Equal(t, "forbidden", apiCode(err))
	ctx := context.Background()
	pool := s.srv.Database().Pool
	var logRows, events int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.gate'
		AND detail->>'path' = $1`, "/v1/support/sessions/x\u2400y\ufffdz/commands").Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'support.gate'
		AND payload->'detail'->>'path' = $1`, "/v1/support/sessions/x\u2400y\ufffdz/commands").Scan(&events))
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
	var rep struct {
		Clean bool `json:"clean"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/audit/verify", map[string]string{"since": "1h"}, &rep))
	assert.True(t, rep.Clean)
}
