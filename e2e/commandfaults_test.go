package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/patch"
	"github.com/argus-remote/argus/topics"
)

// TestCommand_AgentGoneIsAnsweredAtOnce guards against commands waiting
// out the command timeout for an agent that is not there: one that left
// is refused agent_offline after the short reconnect wait, and one that
// leaves with the command in flight ends it agent_disconnected, in both
// trails, the moment the broker sees it go.
func TestCommand_AgentGoneIsAnsweredAtOnce(t *testing.T) {
	s := newSupportEnv(t, map[string]any{"command-reconnect-wait": "1s"})
	s.consentAndArm(t)

	// Gone before the command.
	agentID, _, proc := s.runAgent(t, "cam-gw-1")
	sess, token := s.activate(t, agentID, "")
	proc.Stop()
	start := time.Now()
	_, err := s.command(t, sess.ID, token, "ping")
	assert.Equal(t, "agent_offline", apiCode(err))
	assert.Less(t, time.Since(start), 2*time.Second)
	denied, deniedEvents := s.deniedWith(t, "support.command", "agent_offline")
	assert.Equal(t, 1, denied)
	assert.Equal(t, 1, deniedEvents)

	// Gone with the command in flight.
	f, a := s.activeFake(t, "gw-b")
	answer := s.commandAsync(t, a, "tail_log")
	var cmd topics.CommandMsg
	f.next(t, s, topics.Commands, topics.PurposeCommand, &cmd, func() bool { return cmd.Name == "tail_log" })
	require.NoError(t, f.c.Disconnect(&paho.Disconnect{ReasonCode: 0x04}))
	ans := <-answer
	assert.Equal(t, "agent_disconnected", ans.code)
	assert.Less(t, ans.took, 2*time.Second)
	require.NotNil(t, ans.err)
	assert.Equal(t, cmd.ID, ans.err.CommandID)
	var status, code string
	ctx := context.Background()
	pool := s.srv.Database().Pool
	require.NoError(t, pool.QueryRow(ctx, "SELECT status, error_code FROM commands WHERE id = $1", cmd.ID).Scan(&status, &code))
	assert.Equal(t, "interrupted", status)
	assert.Equal(t, "agent_disconnected", code)
	var logRows, events int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.command.completed'
		AND outcome = 'unknown' AND detail->>'command_id' = $1 AND detail->>'code' = 'agent_disconnected'`, cmd.ID).Scan(&logRows))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'support.command.completed'
		AND payload->>'outcome' = 'unknown' AND payload->'detail'->>'command_id' = $1`, cmd.ID).Scan(&events))
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
}

// TestCommand_WaitsBrieflyForAReconnectingAgent guards against commands
// lost to an agent that is back but has not yet taken up its commands (as
// after a server restart): the command waits for the subscription, and is
// delivered.
func TestCommand_WaitsBrieflyForAReconnectingAgent(t *testing.T) {
	s := newSupportEnv(t, map[string]any{"command-reconnect-wait": "10s"})
	s.consentAndArm(t)
	f, a := s.activeFake(t, "gw-b")
	require.NoError(t, f.c.Disconnect(&paho.Disconnect{}))
	require.Eventually(t, func() bool { return !s.online(f.e.AgentID) }, 5*time.Second, 20*time.Millisecond)
	c, _, err := mqtttest.Dial(t, s.srv.MQTTURL(), mqtttest.Options{ClientID: f.e.AgentID, Username: f.e.AgentID, Password: f.e.Secret})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	back := &fakeAgent{e: f.e, id: f.id, c: c}

	// Back, not yet subscribed: the command waits for it.
	answer := s.commandAsync(t, a, "ping")
	require.Eventually(t, func() bool { return s.srv.Sessions().AwaitingAgents() == 1 }, 5*time.Second, 10*time.Millisecond)
	back.subscribe(t, topics.Commands)
	var cmd topics.CommandMsg
	back.next(t, s, topics.Commands, topics.PurposeCommand, &cmd, func() bool { return cmd.Name == "ping" })
	back.publish(t, topics.Results, topics.ResultMsg{V: topics.Version, CommandID: cmd.ID, SessionID: cmd.SessionID, AgentID: f.e.AgentID,
		Status: topics.ResultOK, Data: json.RawMessage(`{"pong":true}`)})
	ans := <-answer
	require.Empty(t, ans.code)
	assert.Equal(t, "ok", ans.res.Status)
	assert.Zero(t, s.srv.Sessions().AwaitingAgents())
}

// TestCommand_CompletionNeverWrittenIsMarkedInterrupted guards against a
// command staying "requested" for ever when its completion could not be
// written: the operator gets its id, and once past its deadline the
// check gives it a final status and a support.command.interrupted action
// (outcome unknown) in both trails; one still running is left alone.
func TestCommand_CompletionNeverWrittenIsMarkedInterrupted(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	sess, token := s.activate(t, agentID, "")
	ctx := context.Background()
	pool := s.srv.Database().Pool
	_, err := pool.Exec(ctx, `CREATE FUNCTION test_refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused by test'; END $$`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "CREATE TRIGGER test_refuse_completion BEFORE UPDATE ON commands FOR EACH ROW EXECUTE FUNCTION test_refuse_completion()")
	require.NoError(t, err)

	_, err = s.command(t, sess.ID, token, "ping")
	var apiErr *apiclient.Error
	require.True(t, asAPIError(err, &apiErr), "%v", err)
	assert.Equal(t, "completion_not_recorded", apiErr.Code)
	require.NotEmpty(t, apiErr.CommandID)
	_, err = pool.Exec(ctx, "DROP TRIGGER test_refuse_completion ON commands")
	require.NoError(t, err)

	// Not yet past its deadline: left alone.
	require.NoError(t, s.srv.Sessions().CheckState(ctx))
	var status string
	require.NoError(t, pool.QueryRow(ctx, "SELECT status FROM commands WHERE id = $1", apiErr.CommandID).Scan(&status))
	assert.Equal(t, "requested", status)

	_, err = pool.Exec(ctx, "UPDATE commands SET deadline = now() - interval '1 minute' WHERE id = $1", apiErr.CommandID)
	require.NoError(t, err)
	require.NoError(t, s.srv.Sessions().CheckState(ctx))
	var code string
	require.NoError(t, pool.QueryRow(ctx, "SELECT status, error_code FROM commands WHERE id = $1", apiErr.CommandID).Scan(&status, &code))
	assert.Equal(t, "interrupted", status)
	assert.Equal(t, "interrupted", code)
	logRows, events := s.auditPair(t, "support.command.interrupted", sess.ID)
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
	var outcome string
	require.NoError(t, pool.QueryRow(ctx, "SELECT outcome FROM audit_log WHERE action = 'support.command.interrupted' AND detail->>'command_id' = $1",
		apiErr.CommandID).Scan(&outcome))
	assert.Equal(t, "unknown", outcome)
	// Marked once.
	require.NoError(t, s.srv.Sessions().CheckState(ctx))
	logRows, _ = s.auditPair(t, "support.command.interrupted", sess.ID)
	assert.Equal(t, 1, logRows)
}

// TestPatch_UnknownOutcomeSettledByCapabilities guards against a patch
// whose outcome the audit cannot tell: once marked interrupted, the
// agent's next capability report settles it with what the agent has.
func TestPatch_UnknownOutcomeSettledByCapabilities(t *testing.T) {
	p := newPatchEnv(t)
	failCommandsWrites(t, p, "UPDATE")
	b := p.bundle(t, p.key, patch.Manifest{ID: "HF-S", Version: "1.4.0", Files: []patch.File{{Target: "bin/run.sh"}}},
		map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v4\n")})
	c := *p.api
	c.SessionToken = p.token
	err := c.DoRaw(context.Background(), "POST", "/v1/support/sessions/"+p.sessionID+"/patch", "application/octet-stream", b, nil)
	var apiErr *apiclient.Error
	require.True(t, asAPIError(err, &apiErr), "%v", err)
	require.Equal(t, "completion_not_recorded", apiErr.Code)
	ctx := context.Background()
	pool := p.srv.Database().Pool
	_, err = pool.Exec(ctx, "DROP TRIGGER test_refuse_patch ON commands")
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "UPDATE commands SET deadline = now() - interval '1 minute' WHERE id = $1", apiErr.CommandID)
	require.NoError(t, err)
	require.NoError(t, p.srv.Sessions().CheckState(ctx))

	p.run(t, p.sessionID, p.token, "get_capabilities", nil)
	var applied string
	require.NoError(t, pool.QueryRow(ctx, `SELECT a.detail->>'applied' FROM audit_log a JOIN events e ON e.id = a.id
		WHERE a.action = 'support.patch.settled' AND a.detail->>'command_id' = $1`, apiErr.CommandID).Scan(&applied))
	assert.Equal(t, "true", applied)
	// Settled once.
	p.run(t, p.sessionID, p.token, "get_capabilities", nil)
	logRows, events := p.auditPair(t, "support.patch.settled", p.sessionID)
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
}
