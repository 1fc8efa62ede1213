package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// drainAcks forgets the activation acks a node has heard so far, so that
// the next awaitAck sees only what follows (and the channel never fills
// and stalls the broker's inline handler).
func drainAcks(s *supportEnv) {
	for {
		select {
		case <-s.acks:
		default:
			return
		}
	}
}

// count runs a count(*) query on the shared database.
func count(t *testing.T, s *supportEnv, q string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), q, args...).Scan(&n))
	return n
}

// deniedBoth counts an action's refusals with code in audit_log and in
// events: the two must move together.
func deniedBoth(t *testing.T, s *supportEnv, action, code string) [2]int {
	t.Helper()
	return [2]int{
		count(t, s, `SELECT count(*) FROM audit_log WHERE action = $1 AND outcome = 'denied' AND detail->>'code' = $2`, action, code),
		count(t, s, `SELECT count(*) FROM events WHERE action = $1 AND payload->>'outcome' = 'denied' AND payload->'detail'->>'code' = $2`, action, code),
	}
}

// rawCall sends one request and returns its status and body as sent, so
// two nodes' answers can be compared byte for byte.
func rawCall(t *testing.T, hc *http.Client, method, url string, hdr map[string]string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func errCode(b []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Error.Code
}

// subscribeInline has node s's own broker hand every message on filter to
// fn until the test ends.
func subscribeInline(t *testing.T, s *supportEnv, filter string, id int, fn func(packets.Packet)) {
	t.Helper()
	brk := s.srv.Broker().Server()
	require.NoError(t, brk.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) { fn(pk) }))
	t.Cleanup(func() { _ = brk.Unsubscribe(filter, id) })
}

// refusedSubscribe reports whether c's subscription to filter is refused.
func refusedSubscribe(t *testing.T, c interface {
	Subscribe(context.Context, *paho.Subscribe) (*paho.Suback, error)
}, filter string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	return err != nil || (sa != nil && sa.Reasons[0] >= 0x80)
}

// TestClusterInvariant checks DESIGN.md §3's invariants where they can
// break across nodes, on one routed pair shared by the subtests (run in
// order): node a is the node the operator calls, node b holds the agents
// under test. What other cluster tests already guard is named in the
// subtests' comments rather than run again.
func TestClusterInvariant(t *testing.T) {
	p := newRoutedPair(t, nil, nil)
	p.a.consentAndArm(t)
	ctx := context.Background()
	// The real agent most subtests use, held by node b.
	rbID, rbDir, rbProc := p.b.runAgent(t, "cam-gw-b")
	p.heldBy(t, rbID, "node-b")
	rbTopic, err := topics.ParseAgentID(rbID)
	require.NoError(t, err)

	// 1. Outbound only. Activation through node a of an agent that is
	// connected nowhere, or has just left node b, is agent_offline, audited
	// in both trails, and commits no session. (The holder gone with its
	// row left: TestRoute_HolderGoneIsUnreachable; that the agent never
	// listens: TestAgents_* in agents_test.go, and below for node b's.)
	t.Run("1_OutboundOnly_AgentConnectedNowhereIsOfflineOnEveryNode", func(t *testing.T) {
		assert.Empty(t, listeningSockets(t, rbProc.Cmd.Process.Pid), "the agent held by node b listens on nothing")
		never := p.b.enrollDirect(t, "never-connected")
		goneID, _, goneProc := p.b.runAgent(t, "gone-from-b")
		p.heldBy(t, goneID, "node-b")
		goneProc.Stop()
		testenv.Eventually(t, 10*time.Second, func() bool {
			return count(t, p.a, "SELECT count(*) FROM agent_presence WHERE agent_id = $1", goneID) == 0
		}, "node b recorded the agent's leaving")

		before := deniedBoth(t, p.a, "support.activate", "agent_offline")
		for _, c := range []struct {
			via   *supportEnv
			node  string
			agent string
		}{{p.a, "a", never.AgentID}, {p.b, "b", never.AgentID}, {p.a, "a", goneID}, {p.b, "b", goneID}} {
			err := c.via.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": c.agent, "reason": "INC-1"}, nil)
			assert.Equal(t, "agent_offline", apiCode(err), "activation through node %s of %s", c.node, c.agent)
		}
		after := deniedBoth(t, p.a, "support.activate", "agent_offline")
		assert.Equal(t, [2]int{before[0] + 4, before[1] + 4}, after, "each refusal in both trails")
		for _, id := range []string{never.AgentID, goneID} {
			assert.Zero(t, count(t, p.a, "SELECT count(*) FROM support_sessions WHERE agent_id = $1", id), "no session committed for %s", id)
		}
	})

	// 2. Dormant by default. A session ends through node a; the agent on
	// node b then refuses, itself, what is written straight onto its
	// connection past node b's ACL: the session's own signed activation
	// replayed (stale_activation), a validly signed command of the ended
	// session (agent_dormant), and a command signed by another key
	// (bad_signature).
	t.Run("2_DormantByDefault_AgentOnBRefusesTheEndedSessionsMessagesAfterAnEndThroughA", func(t *testing.T) {
		drainAcks(p.b)
		actives := make(chan []byte, 8)
		subscribeInline(t, p.b, rbTopic.Topic(topics.Activation), 710, func(pk packets.Packet) {
			var act topics.ActivationMsg
			if topics.Open(p.b.key.Public().(ed25519.PublicKey), topics.PurposeActivation, pk.Payload, topics.MaxEnvelope, &act) == nil && act.State == topics.StateActive {
				select {
				case actives <- append([]byte(nil), pk.Payload...):
				default:
				}
			}
		})
		results := make(chan topics.ResultMsg, 8)
		subscribeInline(t, p.b, rbTopic.Topic(topics.Results), 711, func(pk packets.Packet) {
			var r topics.ResultMsg
			if json.Unmarshal(pk.Payload, &r) == nil {
				results <- r
			}
		})

		sess, tok := p.a.activate(t, rbID, "")
		require.Equal(t, "ok", p.a.run(t, sess.ID, tok, "ping", nil).Status)
		var old []byte
		select {
		case old = <-actives:
		case <-time.After(5 * time.Second):
			t.Fatal("node b never published the activation")
		}
		// Invariant 10 on the way: node b's indicator and the agent's own
		// account name the session opened through node a.
		var ts struct {
			Active   bool `json:"active"`
			Sessions []struct {
				SessionID string `json:"session_id"`
			} `json:"sessions"`
		}
		p.b.readTenantStatus(t, sess.TenantID, &ts)
		assert.True(t, ts.Active, "node b's indicator is on")
		if assert.Len(t, ts.Sessions, 1) {
			assert.Equal(t, sess.ID, ts.Sessions[0].SessionID)
		}
		status, err := agent.ReadStatus(rbDir)
		require.NoError(t, err)
		assert.Equal(t, topics.StateActive, status.State)
		assert.Equal(t, sess.ID, status.SessionID)

		require.NoError(t, p.a.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
		p.b.assertClosed(t, sess, rbDir, rbProc, "deactivated")

		cl, ok := p.b.srv.Broker().Server().Clients.Get(rbID)
		require.True(t, ok, "the agent is on node b")
		inject := func(kind topics.Kind, payload []byte) {
			require.NoError(t, cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName: rbTopic.Topic(kind), Payload: payload}))
		}
		inject(topics.Activation, old)
		ack := p.b.awaitAck(t, sess.ID)
		assert.Equal(t, "stale_activation", ack.Error, "the replayed activation is refused")
		assert.Equal(t, topics.StateDormant, ack.State)
		assert.True(t, dormant(rbDir), "the agent stays dormant")

		cmd := topics.CommandMsg{V: topics.Version, ID: uuid.NewString(), SessionID: sess.ID, TenantID: sess.TenantID, AgentID: rbID,
			Name: "ping", IssuedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Minute).UTC()}
		signed, err := topics.Sign(p.b.key, topics.PurposeCommand, cmd)
		require.NoError(t, err)
		_, other, _ := ed25519.GenerateKey(nil)
		forgedCmd := cmd
		forgedCmd.ID = uuid.NewString()
		forged, err := topics.Sign(other, topics.PurposeCommand, forgedCmd)
		require.NoError(t, err)
		for _, c := range []struct {
			payload []byte
			id      string
			code    string
		}{{signed, cmd.ID, "agent_dormant"}, {forged, "", "bad_signature"}} {
			inject(topics.Commands, c.payload)
			deadline := time.After(5 * time.Second)
			for answered := false; !answered; {
				select {
				case r := <-results:
					// The session's own ping answered earlier; an unsigned
					// command's answer carries no id.
					if r.CommandID != c.id {
						continue
					}
					answered = true
					assert.Equal(t, topics.ResultRefused, r.Status)
					if assert.NotNil(t, r.Error) {
						assert.Equal(t, c.code, r.Error.Code)
					}
				case <-deadline:
					t.Fatalf("the agent did not answer the injected command (%s)", c.code)
				}
			}
		}
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM commands WHERE id = $1", cmd.ID), "nothing ran")
	})

	// 3. Broker ACL. A fake agent on node b, whose session was opened
	// through node a, may take up its commands only while it is live;
	// neither it on node b nor an agent on node a may ever read another
	// agent's topics, wildcards, $SYS or shared subscriptions. After the
	// end through node a its subscription on node b is gone, a new one is
	// refused, and a command published on node b's broker is not delivered.
	t.Run("3_BrokerACL_CommandTopicOnBFollowsAnEndThroughAAndNoAgentReadsAnother", func(t *testing.T) {
		f := p.b.fakeAgent(t, "acl-b")
		p.heldBy(t, f.e.AgentID, "node-b")
		g := p.a.fakeAgent(t, "acl-a")
		p.heldBy(t, g.e.AgentID, "node-a")
		assert.True(t, refusedSubscribe(t, f.c, f.id.Topic(topics.Commands)), "dormant: its own commands refused on node b")

		f.subscribe(t, topics.Activation)
		done := p.a.activateAsync(t, f.e.AgentID)
		var act topics.ActivationMsg
		f.next(t, p.b, topics.Activation, topics.PurposeActivation, &act, func() bool { return act.State == topics.StateActive })
		f.subscribe(t, topics.Commands)
		f.publish(t, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: f.e.AgentID, SessionID: act.SessionID, State: topics.StateActive})
		got := <-done
		require.Empty(t, got.code, "activated through node a")
		assert.True(t, p.b.srv.Policy().Active(f.e.AgentID), "open on the holder")
		assert.False(t, p.a.srv.Policy().Active(f.e.AgentID), "not on the node that was called")

		forbidden := func(self, other topics.AgentID) []string {
			return []string{
				other.Topic(topics.Commands), other.Topic(topics.Activation), other.Topic(topics.Results),
				"#", "argus/#", "argus/v1/agents/+/commands", "argus/v1/agents/+/activation", "$SYS/#",
				"$share/g/" + self.Topic(topics.Commands), "$share/g/" + other.Topic(topics.Commands), topics.StatusFilter,
			}
		}
		for _, filter := range forbidden(f.id, g.id) {
			assert.True(t, refusedSubscribe(t, f.c, filter), "node b refuses the live agent %s", filter)
		}
		for _, filter := range append(forbidden(g.id, f.id), g.id.Topic(topics.Commands)) {
			assert.True(t, refusedSubscribe(t, g.c, filter), "node a refuses the dormant agent %s", filter)
		}
		for _, topic := range []string{g.id.Topic(topics.Results), g.id.Topic(topics.Heartbeat), f.id.Topic(topics.Commands), f.id.Topic(topics.Activation)} {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := f.c.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"forged":true}`)})
			cancel()
			assert.True(t, err != nil || (resp != nil && resp.ReasonCode >= 0x80), "node b refuses the agent's publish to %s", topic)
		}

		require.NoError(t, p.a.do(t, "POST", "/v1/support/sessions/"+got.session.ID+"/deactivate", nil, nil))
		testenv.Eventually(t, 5*time.Second, func() bool { return !p.b.srv.Policy().Active(f.e.AgentID) }, "node b closed the ACL")
		testenv.Eventually(t, 5*time.Second, func() bool {
			cl, ok := p.b.srv.Broker().Server().Clients.Get(f.e.AgentID)
			if !ok {
				return false
			}
			_, subscribed := cl.State.Subscriptions.Get(f.id.Topic(topics.Commands))
			return !subscribed
		}, "node b dropped the commands subscription")
		assert.True(t, refusedSubscribe(t, f.c, f.id.Topic(topics.Commands)), "ended: its own commands refused on node b again")

		cmd := topics.CommandMsg{V: topics.Version, ID: uuid.NewString(), SessionID: got.session.ID, TenantID: got.session.TenantID, AgentID: f.e.AgentID,
			Name: "ping", IssuedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Minute).UTC()}
		payload, err := topics.Sign(p.b.key, topics.PurposeCommand, cmd)
		require.NoError(t, err)
		require.NoError(t, p.b.srv.Broker().Publish(f.id.Topic(topics.Commands), payload, false, 1, nil))
		require.NoError(t, p.b.srv.Broker().Publish(f.id.Topic(topics.Activation), []byte("sentinel"), false, 1, nil))
		deadline := time.After(5 * time.Second)
		for seen := false; !seen; {
			select {
			case pk := <-f.c.Received:
				require.NotEqual(t, f.id.Topic(topics.Commands), pk.Topic, "a command reached the ended agent")
				seen = pk.Topic == f.id.Topic(topics.Activation) && string(pk.Payload) == "sentinel"
			case <-deadline:
				t.Fatal("no sentinel")
			}
		}
	})

	// 4. Consent is a hard gate on every node. Withdrawn through node a,
	// it ends the session node b holds and opened, and node b refuses the
	// next activation (tenant_consent_required), then tenant_not_armed once
	// consent alone is back; a disarm through node a ends node b's session
	// the same way. No override field is accepted by node b.
	t.Run("4_ConsentIsAHardGate_WithdrawnOnARefusesOnBAndEndsBsSessions", func(t *testing.T) {
		drainAcks(p.b)
		activateB := func() string {
			return apiCode(p.b.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": rbID, "reason": "INC-4"}, nil))
		}
		sess, tok := p.b.activate(t, rbID, "")
		require.Equal(t, "ok", p.b.run(t, sess.ID, tok, "ping", nil).Status, "node b holds the session in its cache")
		require.NoError(t, p.a.do(t, "POST", "/v1/tenants/acme/consent/withdraw", map[string]string{"reason": "contract ended"}, nil))
		p.b.assertClosed(t, sess, rbDir, rbProc, "consent_withdrawn")
		_, err := p.b.command(t, sess.ID, tok, "ping")
		assert.Equal(t, "session_ended", apiCode(err))

		before := deniedBoth(t, p.a, "support.activate", "tenant_consent_required")
		assert.Equal(t, "tenant_consent_required", activateB())
		assert.Equal(t, [2]int{before[0] + 1, before[1] + 1}, deniedBoth(t, p.a, "support.activate", "tenant_consent_required"), "audited")
		assert.Equal(t, "tenant_consent_required", apiCode(p.b.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "x"}, nil)))
		for _, field := range []string{"override", "force", "skip_consent"} {
			b := map[string]any{"tenant": "acme", "agent": rbID, "reason": "x", field: true}
			assert.Equal(t, "bad_request", apiCode(p.b.do(t, "POST", "/v1/support/sessions", b, nil)), field)
		}

		require.NoError(t, p.a.do(t, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-2", "signed_by": "Jane Roe"}, nil))
		assert.Equal(t, "tenant_not_armed", activateB())
		require.NoError(t, p.a.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-4"}, nil))
		drainAcks(p.b)
		sess, _ = p.b.activate(t, rbID, "")
		require.NoError(t, p.a.do(t, "POST", "/v1/tenants/acme/disarm", map[string]string{"reason": "done"}, nil))
		p.b.assertClosed(t, sess, rbDir, rbProc, "tenant_disarmed")
		assert.Equal(t, "tenant_not_armed", activateB())
		require.NoError(t, p.a.do(t, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-4"}, nil))
	})

	// 4, with the broadcast lost: node c loses every broadcast it sends
	// (ARGUS_TEST_DROP_BROADCASTS=1). Consent withdrawn through it still
	// ends node b's session, within one sweep, and node b refuses the next
	// activation. (Deactivation and revocation the same way:
	// TestCluster/DeactivateWithBroadcastLost_DormantWithinOneSweep and
	// TestCluster/RevokeWithBroadcastLost_DisconnectedWithinOneSweep.)
	t.Run("4_ConsentIsAHardGate_WithdrawnWhereTheBroadcastIsLost", func(t *testing.T) {
		lc := testenv.FreeAddr(t)
		o := clusterKeys("node-c", lc, p.a.srv.Wire().RouteAddr())
		o["remote-support-enabled"], o["remote-support-operator-cidrs"], o["ops-token"] = true, "127.0.0.1/32", opsToken
		o["command-signing-key"] = filepath.Join(p.a.env.DataDir, "command-signing.key")
		// The switch is read as the node starts.
		t.Setenv("ARGUS_TEST_DROP_BROADCASTS", "1")
		srvC := testenv.StartInProcessWith(t, &testenv.Env{DataDir: testenv.TempDir(t), DatabaseURL: p.a.env.DatabaseURL}, o, nil)
		require.NoError(t, os.Unsetenv("ARGUS_TEST_DROP_BROADCASTS"))
		testenv.Eventually(t, 10*time.Second, func() bool {
			return srvC.Wire().Reachable(ctx, "node-b", 200*time.Millisecond) && p.b.srv.Wire().Reachable(ctx, "node-c", 200*time.Millisecond)
		}, "node c is routed to node b")
		onC := *p.a.api
		onC.BaseURL = srvC.APIURL()

		drainAcks(p.b)
		sess, _ := p.b.activate(t, rbID, "")
		require.NoError(t, onC.Do(ctx, "POST", "/v1/tenants/acme/consent/withdraw", map[string]string{"reason": "contract ended"}, nil))
		took := within(t, 5*time.Second, func() bool { return dormant(rbDir) }, "the agent on node b dormant within one sweep")
		t.Logf("agent on node b dormant %v after node c committed the withdrawal (broadcast lost)", took.Round(time.Millisecond))
		p.b.assertClosed(t, sess, rbDir, rbProc, "consent_withdrawn")
		assert.Equal(t, "tenant_consent_required", apiCode(p.b.do(t, "POST", "/v1/support/sessions",
			map[string]string{"tenant": "acme", "agent": rbID, "reason": "INC-4"}, nil)))
		require.NoError(t, onC.Do(ctx, "POST", "/v1/tenants/acme/consent", map[string]string{"document_id": "DOC-3", "signed_by": "Jane Roe"}, nil))
		require.NoError(t, onC.Do(ctx, "POST", "/v1/tenants/acme/arm", map[string]string{"reason": "INC-4"}, nil))
	})

	// 5. Time boxes. A session opened through node a whose agent is on
	// node b ends at its expiry (the sweep runs on every node) and node b
	// closes it; an agent cut off from every node ends its session itself
	// at expires_at, and stays dormant when it is back. The cap holds on
	// node b.
	t.Run("5_TimeBoxes_ExpiryEndsASessionOnAnotherNodeAndTheAgentEndsItAlone", func(t *testing.T) {
		drainAcks(p.b)
		link := testenv.NewProxy(t, "tcp", strings.TrimSuffix(strings.TrimPrefix(p.b.srv.MQTTURL(), "ws://"), "/mqtt"))
		cutID, cutDir, cutProc := p.b.runAgent(t, "cut-off-b", "ARGUS_AGENT_BROKER_URLS=ws://"+link.Addr()+"/mqtt")
		p.heldBy(t, cutID, "node-b")
		assert.Equal(t, "ttl_exceeds_cap", apiCode(p.b.do(t, "POST", "/v1/support/sessions",
			map[string]string{"tenant": "acme", "agent": rbID, "reason": "INC-5", "ttl": "121m"}, nil)))

		const ttl = 8 * time.Second
		sess, tok := p.a.activate(t, rbID, ttl.String())
		cutSess, _ := p.a.activate(t, cutID, ttl.String())
		mark := cutProc.LineCount()
		link.Cut()
		mark = cutProc.WaitLog(t, mark, "disconnected from broker", 1, 5*time.Second)
		require.True(t, active(cutDir), "the cut-off agent is still active when it loses every node")

		testenv.Eventually(t, ttl+5*time.Second, func() bool { return dormant(cutDir) }, "the cut-off agent ended its session itself")
		assert.Contains(t, strings.Join(strings.Split(cutProc.Logs(), "\n")[mark:], "\n"), "why=expired", "ended by its own clock")
		p.b.assertClosed(t, sess, rbDir, rbProc, "expired")
		_, err := p.b.command(t, sess.ID, tok, "ping")
		assert.Contains(t, []string{"session_expired", "session_ended"}, apiCode(err))
		testenv.Eventually(t, 5*time.Second, func() bool { return p.b.session(t, cutSess.ID).EndedAt != nil }, "the cut-off agent's session swept")
		assert.Equal(t, "expired", p.b.session(t, cutSess.ID).EndReason)

		link.Restore()
		cutProc.WaitLog(t, mark, "connected to broker", 1, 15*time.Second)
		p.heldBy(t, cutID, "node-b")
		assert.True(t, dormant(cutDir), "back, it stays dormant")
		assert.False(t, p.b.srv.Policy().Active(cutID))
	})

	// 6. The 3-factor gate on node b: each factor missing alone gets the
	// one 403 body node a gives, on opening and on commands, and node b's
	// audit names the factor. An operator token revoked through node a is
	// refused by node b, however recently node b admitted it, as soon as
	// PostgreSQL has announced the change.
	t.Run("6_ThreeFactorGate_EachFactorRefusedAndAuditedOnB", func(t *testing.T) {
		store := operators.NewStore(p.a.srv.Database().Pool)
		_, noScope, err := store.Create(ctx, "bob", operators.NewToken{Scopes: []operators.Scope{operators.ScopeTenantAdmin}})
		require.NoError(t, err)
		carol, carolTok, err := store.Create(ctx, "carol", operators.NewToken{Scopes: []operators.Scope{operators.ScopeRemoteSupport}})
		require.NoError(t, err)
		sess, tok := p.a.activate(t, rbID, "")

		open := []byte(`{"tenant":"acme","agent":"` + uuid.NewString() + `","reason":"INC-6"}`)
		all := map[string]string{"Authorization": "Bearer " + p.a.api.Token, "X-Argus-Ops-Token": opsToken, "X-Argus-Session-Token": tok}
		with := func(k, v string) map[string]string {
			h := map[string]string{}
			for a, b := range all {
				h[a] = b
			}
			h[k] = v
			return h
		}
		cases := []struct {
			name, factor string
			hc           *http.Client
			hdr          map[string]string
		}{
			{"wrong source address", "source_ip", clientFrom("127.0.0.2"), all},
			{"no ops token", "ops_token", nil, with("X-Argus-Ops-Token", "")},
			{"wrong ops token", "ops_token", nil, with("X-Argus-Ops-Token", opsToken[:len(opsToken)-1]+"X")},
			{"no operator token", "operator_token", nil, with("Authorization", "")},
			{"token without remote_support", "remote_support_scope", nil, with("Authorization", "Bearer "+noScope)},
		}
		gateDenied := func(factor string) int {
			return count(t, p.a, `SELECT count(*) FROM audit_log a JOIN events e USING (id) WHERE a.action = 'support.gate'
				AND a.outcome = 'denied' AND a.detail->'failed_factors' = jsonb_build_array($1::text)`, factor)
		}
		var first []byte
		for _, c := range cases {
			for _, ep := range []struct {
				path string
				body []byte
			}{
				{"/v1/support/sessions", open},
				{"/v1/support/sessions/" + sess.ID + "/commands", []byte(`{"name":"ping"}`)},
			} {
				before := gateDenied(c.factor)
				stB, bodyB := rawCall(t, c.hc, "POST", p.b.srv.APIURL()+ep.path, c.hdr, ep.body)
				assert.Equal(t, before+1, gateDenied(c.factor), "%s %s: node b's audit names the factor, in both trails", c.name, ep.path)
				stA, bodyA := rawCall(t, c.hc, "POST", p.a.srv.APIURL()+ep.path, c.hdr, ep.body)
				assert.Equal(t, http.StatusForbidden, stB, "%s %s", c.name, ep.path)
				assert.Equal(t, "forbidden", errCode(bodyB), "%s %s", c.name, ep.path)
				assert.Equal(t, stA, stB)
				assert.Equal(t, string(bodyA), string(bodyB), "%s %s: the same answer on both nodes", c.name, ep.path)
				assert.NotContains(t, string(bodyB), c.factor, "the answer does not say which factor failed")
				if first == nil {
					first = bodyB
				}
				assert.Equal(t, string(first), string(bodyB), "%s %s: one body whatever the factor", c.name, ep.path)
			}
		}
		st, body := rawCall(t, nil, "POST", p.b.srv.APIURL()+"/v1/support/sessions", all, open)
		assert.Equal(t, http.StatusNotFound, st, "all three factors: past the gate (%s)", body)
		assert.Equal(t, "agent_not_found", errCode(body))

		carolOnB := apiclient.Client{BaseURL: p.b.srv.APIURL(), Token: carolTok, OpsToken: opsToken}
		require.NoError(t, carolOnB.Do(ctx, "GET", "/v1/support/sessions", nil, nil), "node b admits carol (and may hold her token's row)")
		require.NoError(t, p.a.do(t, "POST", "/v1/operators/carol/tokens/"+carol.TokenID+"/revoke", nil, nil))
		// Node b learns of the change from PostgreSQL's announcement, which
		// follows the commit: well inside the cache's 10 s bound, so only
		// the announcement explains it.
		revoked := time.Now()
		testenv.Eventually(t, 2*time.Second, func() bool {
			return apiCode(carolOnB.Do(ctx, "GET", "/v1/support/sessions", nil, nil)) == "token_revoked"
		}, "node b refuses the token revoked through node a")
		t.Logf("node b refused the token %v after node a's revocation returned", time.Since(revoked).Round(time.Millisecond))
		require.NoError(t, p.a.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	})

	// 7. Secrets shown once. A session token minted by node a opens the
	// session on node b; it is 256 random bits, stored only as its hash,
	// in no audit row of either trail, and in no message between the
	// nodes.
	t.Run("7_SecretsShownOnce_TokenFromAWorksOnBStoredHashedNeverOnTheWire", func(t *testing.T) {
		var mu sync.Mutex
		var wire [][]byte
		sub, err := p.a.srv.Wire().Conn().Subscribe("argus.route.>", func(m *nats.Msg) {
			mu.Lock()
			wire = append(wire, append([]byte(m.Subject+" "), m.Data...))
			mu.Unlock()
		})
		require.NoError(t, err)
		defer func() { _ = sub.Unsubscribe() }()
		require.NoError(t, p.a.srv.Wire().Conn().Flush())

		sess, tok := p.a.activate(t, rbID, "")
		secret := strings.TrimPrefix(tok, "argus_ses_")
		raw, err := hex.DecodeString(secret[len(secret)-64:])
		require.NoError(t, err, "the token ends in 64 hex digits")
		assert.Len(t, raw, 32, "256 random bits")
		res, err := p.b.command(t, sess.ID, tok, "ping")
		require.NoError(t, err, "node a's token works on node b")
		assert.Equal(t, "ok", res.Status)
		require.NoError(t, p.b.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
		require.NoError(t, p.a.srv.Wire().Conn().Flush())

		sum := sha256.Sum256([]byte(tok))
		assert.Equal(t, 1, count(t, p.a, "SELECT count(*) FROM support_sessions WHERE id = $1 AND token_hash = $2", sess.ID, sum[:]), "stored as its hash")
		tail := secret[len(secret)-32:]
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM support_sessions WHERE token_hash::text LIKE '%' || $1 || '%'", tail))
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%' OR reason LIKE '%' || $1 || '%'", tail), "in no audit_log row")
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'", tail), "in no event")
		// The agent's secret, minted by node b at enrollment: 256 bits,
		// stored as its hash only, in no trail.
		st, err := agent.LoadState(rbDir)
		require.NoError(t, err)
		rawSecret, err := hex.DecodeString(st.Secret)
		require.NoError(t, err)
		assert.Len(t, rawSecret, 32, "256 random bits")
		secretSum := sha256.Sum256([]byte(st.Secret))
		assert.Equal(t, 1, count(t, p.a, "SELECT count(*) FROM agents WHERE id = $1 AND secret_hash = $2", rbID, secretSum[:]), "stored as its hash")
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM agents a WHERE row_to_json(a)::text LIKE '%' || $1 || '%'", st.Secret[32:]))
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%'", st.Secret[32:]))
		assert.Zero(t, count(t, p.a, "SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'", st.Secret[32:]))
		mu.Lock()
		defer mu.Unlock()
		assert.NotEmpty(t, wire, "the command crossed the nodes")
		for _, m := range wire {
			assert.NotContains(t, string(m), tail, "the token crossed the wire")
		}
	})

	// 8. Bound sessions. Through node b, a session token opens only its
	// own session, whichever node holds either agent; the request cannot
	// name an agent, and only allowlisted commands run. Each refusal is
	// audited and reaches no agent.
	t.Run("8_BoundSessions_TokenUsedOnBCannotReachAnotherAgent", func(t *testing.T) {
		raID, _, _ := p.a.runAgent(t, "cam-gw-a")
		p.heldBy(t, raID, "node-a")
		sa, ta := p.a.activate(t, raID, "")
		sb, tb := p.a.activate(t, rbID, "")
		before := count(t, p.a, "SELECT count(*) FROM commands")
		tokenInvalid := deniedBoth(t, p.a, "support.command", "session_token_invalid")
		_, err := p.b.command(t, sb.ID, ta, "ping")
		assert.Equal(t, "session_token_invalid", apiCode(err), "node a's agent's token does not open node b's agent's session")
		_, err = p.b.command(t, sa.ID, tb, "ping")
		assert.Equal(t, "session_token_invalid", apiCode(err))
		assert.Equal(t, [2]int{tokenInvalid[0] + 2, tokenInvalid[1] + 2}, deniedBoth(t, p.a, "support.command", "session_token_invalid"), "audited")

		c := *p.b.api
		c.SessionToken = tb
		for _, body := range []map[string]any{
			{"name": "ping", "agent": raID},
			{"name": "ping", "agent_id": raID},
			{"name": "ping", "session": sa.ID},
		} {
			err := c.Do(ctx, "POST", "/v1/support/sessions/"+sb.ID+"/commands", body, nil)
			assert.Equal(t, "bad_request", apiCode(err), "%v", body)
		}
		notAllowed := deniedBoth(t, p.a, "support.command", "command_not_allowed")
		for _, name := range []string{"shell", "exec", "PING", "ping "} {
			_, err := p.b.command(t, sb.ID, tb, name)
			assert.Equal(t, "command_not_allowed", apiCode(err), name)
		}
		assert.Equal(t, [2]int{notAllowed[0] + 4, notAllowed[1] + 4}, deniedBoth(t, p.a, "support.command", "command_not_allowed"), "audited")
		assert.Equal(t, before, count(t, p.a, "SELECT count(*) FROM commands"), "no refused command was sent")

		res, err := p.b.command(t, sa.ID, ta, "agent_info")
		require.NoError(t, err)
		assert.Contains(t, string(res.Data), raID, "its own token reaches its own agent, on node a")
		for _, id := range []string{sa.ID, sb.ID} {
			require.NoError(t, p.b.do(t, "POST", "/v1/support/sessions/"+id+"/deactivate", nil, nil))
		}
	})

	// 11. Bad input through a routed call: node a and node b answer the
	// same status and stable code, never a 5xx, each refusal audited, and
	// the session goes on.
	t.Run("11_BadInput_SameStableCodeOnEachNode", func(t *testing.T) {
		sess, tok := p.a.activate(t, rbID, "")
		hdr := map[string]string{"Authorization": "Bearer " + p.a.api.Token, "X-Argus-Ops-Token": opsToken, "X-Argus-Session-Token": tok}
		cmdPath := "/v1/support/sessions/" + sess.ID + "/commands"
		name := func(s *supportEnv) string { return map[bool]string{true: "node a", false: "node b"}[s == p.a] }
		for _, c := range []struct {
			name, path string
			body       []byte
			status     int
			code       string
			action     string
		}{
			{"oversized body", cmdPath, append(append([]byte(`{"name":"ping","args":"`), bytes.Repeat([]byte("x"), 1<<20)...), '"', '}'), http.StatusRequestEntityTooLarge, "payload_too_large", "support.command"},
			{"unknown command", cmdPath, []byte(`{"name":"rm_rf"}`), http.StatusBadRequest, "command_not_allowed", "support.command"},
			{"NUL in the name", cmdPath, []byte(`{"name":"ping\u0000"}`), http.StatusBadRequest, "invalid_text", "support.command"},
			{"unknown field", cmdPath, []byte(`{"name":"ping","agent":"` + uuid.NewString() + `"}`), http.StatusBadRequest, "bad_request", "support.command"},
			{"not JSON", cmdPath, []byte(`{"name":`), http.StatusBadRequest, "bad_request", "support.command"},
			{"bad ttl", "/v1/support/sessions", []byte(`{"tenant":"acme","agent":"` + rbID + `","reason":"x","ttl":"soon"}`), http.StatusBadRequest, "bad_request", "support.activate"},
			{"reason too long", "/v1/support/sessions", []byte(`{"tenant":"acme","agent":"` + rbID + `","reason":"` + strings.Repeat("r", 1100) + `"}`), http.StatusBadRequest, "value_too_long", "support.activate"},
		} {
			for _, node := range []*supportEnv{p.a, p.b} {
				before := deniedBoth(t, p.a, c.action, c.code)
				st, body := rawCall(t, nil, "POST", node.srv.APIURL()+c.path, hdr, c.body)
				assert.Equal(t, c.status, st, "%s on %s: %s", c.name, name(node), body)
				assert.Equal(t, c.code, errCode(body), "%s on %s", c.name, name(node))
				assert.Equal(t, [2]int{before[0] + 1, before[1] + 1}, deniedBoth(t, p.a, c.action, c.code), "%s on %s: audited in both trails", c.name, name(node))
			}
		}
		for _, node := range []*supportEnv{p.a, p.b} {
			res, err := node.command(t, sess.ID, tok, "ping")
			require.NoError(t, err, "the session still works")
			assert.Equal(t, "ok", res.Status)
		}
		require.NoError(t, p.a.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	})

	// 9. Every action audited twice, atomically. Concurrent commands
	// through both nodes, with refusals at node b's gate and node a's
	// checks beside them: both trails hold every one, the chain is whole,
	// and reconcile through either node is clean, over everything this
	// test did. (Three real nodes: TestCluster/ThreeNodesWritingAuditKeepOneChain.)
	t.Run("9_AuditedTwice_ConcurrentWritesAndRefusalsOnBothNodesReconcileClean", func(t *testing.T) {
		name := func(s *supportEnv) string { return map[bool]string{true: "node a", false: "node b"}[s == p.a] }
		sess, tok := p.a.activate(t, rbID, "")
		gateBefore := count(t, p.a, `SELECT count(*) FROM audit_log WHERE action = 'support.gate' AND outcome = 'denied'`)
		const rounds = 15
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failures []string
		fail := func(f string) { mu.Lock(); failures = append(failures, f); mu.Unlock() }
		for _, node := range []*supportEnv{p.a, p.b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := *node.api
				c.SessionToken = tok
				for range rounds {
					var res apiclient.CommandResult
					if err := c.Do(ctx, "POST", "/v1/support/sessions/"+sess.ID+"/commands", map[string]string{"name": "ping"}, &res); err != nil || res.Status != "ok" {
						fail("ping: " + apiCode(err))
					}
				}
			}()
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			c := apiclient.Client{BaseURL: p.b.srv.APIURL(), Token: p.a.api.Token}
			for range rounds {
				if apiCode(c.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": rbID, "reason": "x"}, nil)) != "forbidden" {
					fail("gate on node b let a request without the ops token through")
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range rounds {
				if apiCode(p.a.do(t, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": rbID, "reason": "x"}, nil)) != "agent_busy" {
					fail("node a activated a busy agent")
				}
			}
		}()
		wg.Wait()
		assert.Empty(t, failures)
		require.NoError(t, p.b.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))

		assert.Equal(t, 2*2*rounds, count(t, p.a, `SELECT count(*) FROM audit_log a JOIN events e USING (id)
			WHERE a.session_id = $1 AND a.action IN ('support.command.requested', 'support.command.completed')`, sess.ID), "every ping, requested and completed, in both trails")
		assert.Equal(t, gateBefore+rounds, count(t, p.a, `SELECT count(*) FROM audit_log a JOIN events e USING (id) WHERE a.action = 'support.gate' AND a.outcome = 'denied'`),
			"every refusal at node b's gate in both trails")
		assert.Zero(t, count(t, p.a, `SELECT count(*) FROM audit_log a LEFT JOIN events e USING (id) WHERE e.id IS NULL`), "no audit row without its event")
		assert.Zero(t, count(t, p.a, `SELECT count(*) FROM events e LEFT JOIN audit_log a USING (id) WHERE a.id IS NULL`), "no event without its audit row")
		assert.Zero(t, count(t, p.a, `SELECT count(*) FROM events e JOIN events p ON p.seq = e.seq - 1 WHERE e.prev_hash <> p.hash`), "one unbroken chain")
		for _, node := range []*supportEnv{p.a, p.b} {
			var rep struct {
				Clean bool `json:"clean"`
			}
			require.NoError(t, node.do(t, "POST", "/v1/audit/verify", map[string]string{"since": "1h"}, &rep))
			assert.True(t, rep.Clean, "reconcile through %s is clean", name(node))
		}
	})
}

// Invariant 10 (the tenant sees it) across nodes is guarded by
// TestClusterStatus_WatchersOnAnyNodeSeeEveryAgentAndTenant,
// TestClusterStatus_PageOnAnotherNodeTurnsActiveAndBackInChromium and
// TestCluster_SessionSurvivesItsNodesDeath; the agent's own account on a
// node other than the caller's by TestRoute_EveryCommandThroughAnotherNode,
// and node b's indicator by every assertClosed above.
