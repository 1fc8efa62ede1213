package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
	"github.com/argus-remote/argus/topics"
)

// inProcess is a server running in the test process, for tests that reach
// inside the broker.
type inProcess struct {
	env *testenv.Env
	srv *server.Server
}

func startInProcess(t *testing.T) *inProcess {
	t.Helper()
	env := testenv.NewEnv(t)
	srv := testenv.StartInProcess(t, env, nil)
	_, err := tenants.NewStore(srv.Database().Pool).Create(context.Background(), "acme", audit.Entry{Actor: "test"})
	require.NoError(t, err)
	return &inProcess{env: env, srv: srv}
}

// enrollDirect enrolls an agent through the stores and returns its credentials.
func (p *inProcess) enrollDirect(t *testing.T, name string) agents.Enrollment {
	t.Helper()
	store := agents.NewStore(p.srv.Database().Pool)
	tok, err := store.CreateEnrollmentToken(context.Background(), "acme", name, 0, audit.Entry{Actor: "test"})
	require.NoError(t, err)
	e, err := store.Enroll(context.Background(), tok.Token, "127.0.0.1")
	require.NoError(t, err)
	return e
}

// signingKey is the public half of the server's command-signing key.
func (p *inProcess) signingKey(t *testing.T) ed25519.PublicKey {
	t.Helper()
	key, err := signing.LoadOrCreate(filepath.Join(p.env.DataDir, "command-signing.key"))
	require.NoError(t, err)
	return key.Public().(ed25519.PublicKey)
}

func (p *inProcess) dialAgent(t *testing.T, e agents.Enrollment) *mqtttest.Client {
	t.Helper()
	c, _, err := mqtttest.Dial(t, p.srv.MQTTURL(), mqtttest.Options{ClientID: e.AgentID, Username: e.AgentID, Password: e.Secret})
	require.NoError(t, err)
	return c
}

func TestBroker_RefusesBadAgentCredentials(t *testing.T) {
	p := startInProcess(t)
	a, b := p.enrollDirect(t, "a"), p.enrollDirect(t, "b")
	unknown := uuid.NewString()

	for name, o := range map[string]mqtttest.Options{
		"wrong secret":             {ClientID: a.AgentID, Username: a.AgentID, Password: "0123456789abcdef"},
		"another agent's secret":   {ClientID: a.AgentID, Username: a.AgentID, Password: b.Secret},
		"client id not the agent":  {ClientID: "something-else", Username: a.AgentID, Password: a.Secret},
		"client id of another":     {ClientID: b.AgentID, Username: a.AgentID, Password: a.Secret},
		"unknown agent":            {ClientID: unknown, Username: unknown, Password: a.Secret},
		"no credentials":           {ClientID: a.AgentID},
		"username not an agent id": {ClientID: "admin", Username: "admin", Password: "admin"},
	} {
		t.Run(name, func(t *testing.T) {
			_, ack, err := mqtttest.Dial(t, p.srv.MQTTURL(), o)
			require.Error(t, err)
			require.NotNil(t, ack)
			assert.Equal(t, byte(0x86), ack.ReasonCode, "bad user name or password")
		})
	}

	_, ack, err := mqtttest.Dial(t, p.srv.MQTTURL(), mqtttest.Options{ClientID: a.AgentID, Username: a.AgentID, Password: a.Secret})
	require.NoError(t, err, "the agent's own credentials work")
	assert.Equal(t, byte(0), ack.ReasonCode)
}

// recorder captures what the server's inline client sees on agent topics.
type recorder struct {
	mu   sync.Mutex
	msgs []string
	got  chan string
}

func (r *recorder) handler(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
	r.mu.Lock()
	r.msgs = append(r.msgs, pk.Origin+" "+pk.TopicName)
	r.mu.Unlock()
	select {
	case r.got <- pk.TopicName:
	default:
	}
}

func TestBroker_AgentACL(t *testing.T) {
	p := startInProcess(t)
	ea, eb := p.enrollDirect(t, "a"), p.enrollDirect(t, "b")
	idA, _ := topics.ParseAgentID(ea.AgentID)
	idB, _ := topics.ParseAgentID(eb.AgentID)
	brk := p.srv.Broker().Server()

	rec := &recorder{got: make(chan string, 64)}
	require.NoError(t, brk.Subscribe("argus/v1/agents/+/+", 99, rec.handler))

	a, b := p.dialAgent(t, ea), p.dialAgent(t, eb)
	ctx := t.Context()

	// Subscriptions A must not get.
	for _, filter := range []string{
		idB.Topic(topics.Activation),
		idA.Topic(topics.Commands),
		idB.Topic(topics.Commands),
		"#",
		"argus/#",
		"argus/v1/agents/+/activation",
		"argus/v1/agents/" + ea.AgentID + "/#",
		"$SYS/#",
		"$share/g/" + idA.Topic(topics.Commands),
		"$share/g/" + idA.Topic(topics.Activation),
		topics.StatusFilter,
	} {
		sa, err := a.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		if err == nil {
			require.NotNil(t, sa)
			require.GreaterOrEqual(t, sa.Reasons[0], byte(0x80), "subscribe %s must be refused", filter)
		}
	}
	// A's own activation is allowed.
	sa, err := a.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: idA.Topic(topics.Activation), QoS: 1}}})
	require.NoError(t, err)
	assert.Equal(t, byte(1), sa.Reasons[0])
	_, err = b.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: idB.Topic(topics.Activation), QoS: 1}}})
	require.NoError(t, err)
	// Each first receives its own retained activation state: dormant.
	for name, c := range map[string]*mqtttest.Client{"A": a, "B": b} {
		own := map[string]topics.AgentID{"A": idA, "B": idB}[name]
		select {
		case pk := <-c.Received:
			require.Equal(t, own.Topic(topics.Activation), pk.Topic)
			var act topics.ActivationMsg
			require.NoError(t, topics.Open(p.signingKey(t), topics.PurposeActivation, pk.Payload, topics.MaxEnvelope, &act))
			assert.Equal(t, topics.StateDormant, act.State)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s got no retained activation state", name)
		}
	}

	// Publishes A must not make.
	for _, topic := range []string{
		idB.Topic(topics.Heartbeat), idB.Topic(topics.Results), idB.Topic(topics.ActivationAck), idB.Topic(topics.Manifest),
		idB.Topic(topics.Activation), idB.Topic(topics.Commands),
		idA.Topic(topics.Activation), idA.Topic(topics.Commands),
		idA.Status(), "$SYS/broker/fake",
	} {
		// mochi drops a $SYS publish without an answer, hence the deadline.
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := a.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"forged":true}`)})
		cancel()
		refused := err != nil || (resp != nil && resp.ReasonCode >= 0x80)
		assert.True(t, refused, "publish to %s must be refused", topic)
	}
	// A command for dormant A, from the server itself, is not delivered.
	require.NoError(t, brk.Publish(idA.Topic(topics.Commands), []byte("cmd"), false, 1))

	// Sentinels: each client then receives exactly the one message meant for it.
	require.NoError(t, brk.Publish(idB.Topic(topics.Activation), []byte("sentinel-b"), false, 1))
	require.NoError(t, brk.Publish(idA.Topic(topics.Activation), []byte("sentinel-a"), false, 1))
	for name, c := range map[string]*mqtttest.Client{"A": a, "B": b} {
		select {
		case pk := <-c.Received:
			assert.Contains(t, string(pk.Payload), "sentinel", "%s's first delivery is its sentinel, nothing forbidden before it: %s %s", name, pk.Topic, pk.Payload)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s got no sentinel", name)
		}
	}
	for name, c := range map[string]*mqtttest.Client{"A": a, "B": b} {
		select {
		case pk := <-c.Received:
			t.Errorf("%s got more than its sentinel: %s %s", name, pk.Topic, pk.Payload)
		default:
		}
	}

	// A's own heartbeat is the server-side sentinel: it is the only thing
	// from A that reached the server.
	_, err = a.Publish(ctx, &paho.Publish{Topic: idA.Topic(topics.Heartbeat), QoS: 1, Payload: []byte(`{}`)})
	require.NoError(t, err)
	for topic := range rec.got {
		if topic == idA.Topic(topics.Heartbeat) {
			break
		}
	}
	rec.mu.Lock()
	assert.Equal(t, []string{ea.AgentID + " " + idA.Topic(topics.Heartbeat)}, filterOrigin(rec.msgs, ea.AgentID), "nothing forbidden from A reached the server")
	rec.mu.Unlock()

	assert.Positive(t, p.srv.Policy().Denials())
	testenv.Eventually(t, 10*time.Second, func() bool {
		var n int
		_ = p.srv.Database().Pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = 'broker.acl_denied' AND agent_id = $1", ea.AgentID).Scan(&n)
		return n == 1
	}, "denials audited, rate-limited to one row a minute")
	var events int
	require.NoError(t, p.srv.Database().Pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action = 'broker.acl_denied'").Scan(&events))
	assert.Equal(t, 1, events)
}

func filterOrigin(msgs []string, origin string) []string {
	var out []string
	for _, m := range msgs {
		if len(m) > len(origin) && m[:len(origin)] == origin {
			out = append(out, m)
		}
	}
	return out
}

func TestDormantAgent_RefusesCommandsItself(t *testing.T) {
	p := startInProcess(t)
	store := agents.NewStore(p.srv.Database().Pool)
	tok, err := store.CreateEnrollmentToken(context.Background(), "acme", "cam-gw-1", 0, audit.Entry{Actor: "test"})
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "agent")
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", p.srv.APIURL(), "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	id, err := topics.ParseAgentID(st.AgentID)
	require.NoError(t, err)
	proc := testenv.StartAgent(t, dir)
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)

	results := make(chan topics.ResultMsg, 4)
	require.NoError(t, p.srv.Broker().Server().Subscribe(id.Topic(topics.Results), 98, func(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
		var r topics.ResultMsg
		if json.Unmarshal(pk.Payload, &r) == nil {
			results <- r
		}
	}))

	key, err := signing.LoadOrCreate(filepath.Join(p.env.DataDir, "command-signing.key"))
	require.NoError(t, err)
	cmd := topics.CommandMsg{
		V: topics.Version, ID: uuid.NewString(), SessionID: uuid.NewString(), AgentID: st.AgentID, Name: "ping",
		IssuedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Minute).UTC(),
	}
	signed, err := topics.Sign(key, topics.PurposeCommand, cmd)
	require.NoError(t, err)

	// The test-only path: write a PUBLISH straight onto the agent's
	// connection, past the ACL and without any subscription.
	cl, ok := p.srv.Broker().Server().Clients.Get(st.AgentID)
	require.True(t, ok)
	inject := func(payload []byte) {
		require.NoError(t, cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName:   id.Topic(topics.Commands),
			Payload:     payload,
		}))
	}

	inject(signed)
	r := awaitResult(t, results)
	assert.Equal(t, topics.ResultRefused, r.Status)
	assert.Equal(t, "agent_dormant", r.Error.Code, "a validly signed command is still refused while dormant")
	assert.Equal(t, cmd.ID, r.CommandID)

	inject([]byte(`{"v":1,"payload":"e30=","sig":"AAAA"}`))
	r = awaitResult(t, results)
	assert.Equal(t, topics.ResultRefused, r.Status)
	assert.Equal(t, "bad_signature", r.Error.Code)

	proc.WaitLog(t, 0, "refused command", 2, 5*time.Second)
}

func awaitResult(t *testing.T, ch <-chan topics.ResultMsg) topics.ResultMsg {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no result from the agent")
		return topics.ResultMsg{}
	}
}

func TestPresence_RetainedAgentStatusTopic(t *testing.T) {
	p := startInProcess(t)
	e := p.enrollDirect(t, "a")
	id, _ := topics.ParseAgentID(e.AgentID)

	statuses := make(chan topics.AgentStatusMsg, 8)
	require.NoError(t, p.srv.Broker().Server().Subscribe(id.Status(), 97, func(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
		var m topics.AgentStatusMsg
		if json.Unmarshal(pk.Payload, &m) == nil {
			statuses <- m
		}
	}))
	await := func() topics.AgentStatusMsg {
		select {
		case m := <-statuses:
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("no status message")
			return topics.AgentStatusMsg{}
		}
	}

	c := p.dialAgent(t, e)
	m := await()
	assert.True(t, m.Online)
	assert.Equal(t, e.TenantID, m.TenantID)
	assert.Equal(t, topics.StateDormant, m.State)

	require.NoError(t, c.Disconnect(&paho.Disconnect{}))
	m = await()
	assert.False(t, m.Online)

	// Retained: a subscriber arriving later reads the last state.
	late := make(chan bool, 1)
	require.NoError(t, p.srv.Broker().Server().Subscribe(id.Status(), 96, func(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
		var m topics.AgentStatusMsg
		_ = json.Unmarshal(pk.Payload, &m)
		late <- m.Online
	}))
	select {
	case online := <-late:
		assert.False(t, online)
	case <-time.After(5 * time.Second):
		t.Fatal("status is not retained")
	}
}

// Retained messages are the control plane's: an agent that publishes with
// the retain flag on its own topics has its message delivered as usual
// but never stored, so nothing it sends outlives it in the broker.
func TestBroker_AgentPublishesAreNotRetained(t *testing.T) {
	p := startInProcess(t)
	e := p.enrollDirect(t, "a")
	id, _ := topics.ParseAgentID(e.AgentID)
	brk := p.srv.Broker().Server()
	kinds := []topics.Kind{topics.Heartbeat, topics.Manifest, topics.Results, topics.ActivationAck}

	got := make(chan string, 16)
	require.NoError(t, brk.Subscribe("argus/v1/agents/#", 95, func(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) {
		if pk.Origin == e.AgentID {
			got <- pk.TopicName
		}
	}))
	c := p.dialAgent(t, e)
	// The control plane retains the agent's status and activation state
	// as it connects; count from there.
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, status := brk.Topics.Retained.Get(id.Status())
		_, activation := brk.Topics.Retained.Get(id.Topic(topics.Activation))
		return status && activation
	}, "the agent's retained status and activation")
	retainedBefore := brk.Topics.Retained.Len()
	base := liveHeap()

	for _, k := range kinds {
		payload := make([]byte, 7<<20)
		_, err := c.Publish(t.Context(), &paho.Publish{Topic: id.Topic(k), QoS: 1, Retain: true, Payload: payload})
		require.NoError(t, err, "publish on %s", k)
		select {
		case topic := <-got:
			assert.Equal(t, id.Topic(k), topic, "delivered to the control plane")
		case <-time.After(10 * time.Second):
			t.Fatalf("publish on %s not delivered", k)
		}
	}

	held := liveHeap() - base
	t.Logf("heap growth after 4 retained 7 MiB publishes: %.1f MiB", float64(held)/(1<<20))
	assert.Less(t, held, int64(4<<20), "an agent's publishes hold no memory once delivered")
	assert.Equal(t, retainedBefore, brk.Topics.Retained.Len(), "retained message count")
	for _, k := range kinds {
		_, ok := brk.Topics.Retained.Get(id.Topic(k))
		assert.False(t, ok, "%s retained", k)
		// A new subscriber is handed retained messages as it subscribes.
		var late int
		require.NoError(t, brk.Subscribe(id.Topic(k), 94, func(*mqtt.Client, packets.Subscription, packets.Packet) { late++ }))
		assert.Zero(t, late, "a new subscriber to %s got a retained message", k)
	}
}
