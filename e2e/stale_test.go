package e2e

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// TestAgent_SilentIsStaleEverywhere guards against presence saying online
// while an agent is silent: connected but two heartbeats missed, it is
// stale on its status topic, in the API, on the tenant's indicator, and a
// command sent to it says so; a heartbeat makes it fresh again.
func TestAgent_SilentIsStaleEverywhere(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	f, a := s.activeFake(t, "gw-b")
	beat := topics.HeartbeatMsg{V: topics.Version, AgentID: f.e.AgentID, State: topics.StateActive, SessionID: a.session.ID, Interval: 1, Time: time.Now().UTC()}
	f.publish(t, topics.Heartbeat, beat)

	stale := func() bool {
		var got apiclient.Agent
		return s.do(t, "GET", "/v1/agents/"+f.e.AgentID, nil, &got) == nil && got.Online && got.Stale
	}
	testenv.Eventually(t, 5*time.Second, stale, "stale in the API after two missed heartbeats")
	var status topics.AgentStatusMsg
	s.readRetained(t, f.id.Status(), &status)
	assert.True(t, status.Online)
	assert.True(t, status.Stale, "stale on the agent's status topic")
	var ts struct {
		Sessions []struct {
			AgentStale bool `json:"agent_stale"`
		} `json:"sessions"`
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		s.readTenantStatus(t, a.session.TenantID, &ts)
		return len(ts.Sessions) == 1 && ts.Sessions[0].AgentStale
	}, "stale on the tenant's indicator")

	answer := s.commandAsync(t, a, "ping")
	var cmd topics.CommandMsg
	f.next(t, s, topics.Commands, topics.PurposeCommand, &cmd, func() bool { return cmd.Name == "ping" })
	f.publish(t, topics.Results, topics.ResultMsg{V: topics.Version, CommandID: cmd.ID, SessionID: cmd.SessionID, AgentID: f.e.AgentID,
		Status: topics.ResultOK, Data: json.RawMessage(`{}`)})
	ans := <-answer
	require.Empty(t, ans.code)
	assert.Contains(t, ans.res.Warning, "missed its heartbeats")

	beat.Time = time.Now().UTC()
	f.publish(t, topics.Heartbeat, beat)
	testenv.Eventually(t, 5*time.Second, func() bool { return !stale() }, "fresh again after a heartbeat")
}

// TestAgent_FrozenIsDroppedWithinOneAndAHalfHeartbeats guards against a
// dead link staying online: the agent's MQTT keep-alive is its heartbeat
// period, so the broker drops a frozen agent within about 1.5 of them.
func TestAgent_FrozenIsDroppedWithinOneAndAHalfHeartbeats(t *testing.T) {
	s := newSupportEnv(t, nil)
	agentID, _, proc := s.runAgent(t, "cam-gw-1", "ARGUS_AGENT_HEARTBEAT_INTERVAL=2s")
	require.NoError(t, proc.Cmd.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = proc.Cmd.Process.Signal(syscall.SIGCONT) })
	frozen := time.Now()
	testenv.Eventually(t, 6*time.Second, func() bool {
		_, connected := s.srv.Broker().Server().Clients.Get(agentID)
		return !connected
	}, "frozen agent dropped")
	assert.Less(t, time.Since(frozen), 4500*time.Millisecond, "within about 1.5 heartbeat periods of 2 s")
}

// readRetained reads a retained message through the inline client.
func (s *supportEnv) readRetained(t *testing.T, topic string, v any) {
	t.Helper()
	got := make(chan []byte, 1)
	brk := s.srv.Broker().Server()
	subID := int(time.Now().UnixNano()%100000) + 100000
	require.NoError(t, brk.Subscribe(topic, subID, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		select {
		case got <- pk.Payload:
		default:
		}
	}))
	defer func() { _ = brk.Unsubscribe(topic, subID) }()
	select {
	case b := <-got:
		require.NoError(t, json.Unmarshal(b, v))
	case <-time.After(5 * time.Second):
		t.Fatalf("no retained message on %s", topic)
	}
}
