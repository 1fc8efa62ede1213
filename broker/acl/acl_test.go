package acl

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/internal/credential"
	"github.com/argus-remote/argus/topics"
)

const (
	agentA = "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"
	agentB = "7d3e2a91-1c4b-4f6e-8a2d-5b9c0e1f2a3b"
)

type fakeCreds struct {
	secrets map[string]string
	revoked map[string]bool
	calls   atomic.Int64
	// gate, when set, holds each read until it is closed.
	gate chan struct{}
	fail error
}

func (f *fakeCreds) Credentials(ctx context.Context, ids []string, each func(string, []byte, bool, string)) error {
	f.calls.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if f.fail != nil {
		return f.fail
	}
	for _, id := range ids {
		if s, ok := f.secrets[id]; ok {
			each(id, credential.Hash(s), f.revoked[id], "tenant-1")
		}
	}
	return nil
}

func newPolicy() (*Policy, *fakeCreds) {
	f := &fakeCreds{secrets: map[string]string{agentA: "secret-a", agentB: "secret-b"}, revoked: map[string]bool{}}
	return New(f, nil), f
}

func connect(id, user, pass string) broker.ConnectRequest {
	return broker.ConnectRequest{ClientID: id, Username: user, Password: []byte(pass), CleanStart: true, ProtocolVersion: 5}
}

func TestAuthenticate(t *testing.T) {
	p, _ := newPolicy()
	will := connect(agentA, agentA, "secret-a")
	will.HasWill = true
	resume := connect(agentA, agentA, "secret-a")
	resume.CleanStart = false
	expiry := connect(agentA, agentA, "secret-a")
	expiry.SessionExpiry = 3600
	v311 := connect(agentA, agentA, "secret-a")
	v311.ProtocolVersion = 4

	for name, tc := range map[string]struct {
		req  broker.ConnectRequest
		want bool
	}{
		"own id and secret":      {connect(agentA, agentA, "secret-a"), true},
		"wrong secret":           {connect(agentA, agentA, "nope"), false},
		"another agent's secret": {connect(agentA, agentA, "secret-b"), false},
		"client id is not agent": {connect("other", agentA, "secret-a"), false},
		"client id of B":         {connect(agentB, agentA, "secret-a"), false},
		"unknown agent":          {connect("11111111-2222-4333-8444-555555555555", "11111111-2222-4333-8444-555555555555", "x"), false},
		"no password":            {connect(agentA, agentA, ""), false},
		"not a uuid":             {connect("admin", "admin", "admin"), false},
		"will message":           {will, false},
		"resumed session":        {resume, false},
		"session expiry":         {expiry, false},
		"MQTT 3.1.1":             {v311, false},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, p.Authenticate(tc.req))
		})
	}
}

func TestAuthenticate_CachesAndRevocationWinsAtOnce(t *testing.T) {
	p, f := newPolicy()
	good := connect(agentA, agentA, "secret-a")
	assert.True(t, p.Authenticate(good))
	assert.True(t, p.Authenticate(good))
	assert.Equal(t, int64(1), f.calls.Load(), "second check served from cache")

	p.Revoke(agentA)
	assert.False(t, p.Authenticate(good), "revocation is immediate, cache or not")
	assert.False(t, p.Allow(agentA, agentA, mustID(agentA).Topic(topics.Heartbeat), true), "a revoked agent's live client can do nothing")
}

func TestAuthenticate_RevokedInDatabase(t *testing.T) {
	p, f := newPolicy()
	f.revoked[agentA] = true
	assert.False(t, p.Authenticate(connect(agentA, agentA, "secret-a")))
}

func mustID(s string) topics.AgentID {
	id, err := topics.ParseAgentID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func TestAllow_AgentTopics(t *testing.T) {
	p, _ := newPolicy()
	var denied []Denial
	p.OnDeny = func(d Denial) { denied = append(denied, d) }
	a, b := mustID(agentA), mustID(agentB)

	type check struct {
		topic string
		write bool
		want  bool
	}
	dormant := []check{
		{a.Topic(topics.Heartbeat), true, true},
		{a.Topic(topics.Manifest), true, true},
		{a.Topic(topics.ActivationAck), true, true},
		{a.Topic(topics.Results), true, true},
		{a.Topic(topics.Activation), false, true},
		{a.Topic(topics.Activation), true, false},
		{a.Topic(topics.Commands), true, false},
		{a.Topic(topics.Commands), false, false},
		{b.Topic(topics.Activation), false, false},
		{b.Topic(topics.Commands), false, false},
		{b.Topic(topics.Heartbeat), true, false},
		{b.Topic(topics.Results), true, false},
		{"#", false, false},
		{"argus/#", false, false},
		{"argus/v1/agents/+/activation", false, false},
		{"argus/v1/agents/" + agentA + "/#", false, false},
		{"$SYS/#", false, false},
		{"$SYS/broker/clients/connected", false, false},
		{"$share/g/" + a.Topic(topics.Commands), false, false},
		{"$share/g/" + a.Topic(topics.Activation), false, false},
		{a.Status(), false, false},
		{a.Status(), true, false},
		{topics.StatusFilter, false, false},
	}
	for _, c := range dormant {
		assert.Equal(t, c.want, p.Allow(agentA, agentA, c.topic, c.write), "dormant: %s write=%v", c.topic, c.write)
	}
	assert.NotEmpty(t, denied)
	assert.Equal(t, agentA, denied[0].AgentID)

	p.SetActive(agentA, true)
	assert.True(t, p.Allow(agentA, agentA, a.Topic(topics.Commands), false), "active: commands open")
	assert.False(t, p.Allow(agentA, agentA, a.Topic(topics.Commands), true), "active: still never publishes commands")
	assert.False(t, p.Allow(agentA, agentA, "$share/g/"+a.Topic(topics.Commands), false))
	assert.False(t, p.Allow(agentB, agentB, b.Topic(topics.Commands), false), "only the activated agent")

	p.SetActive(agentA, false)
	assert.False(t, p.Allow(agentA, agentA, a.Topic(topics.Commands), false), "closed again at once")
	assert.Equal(t, int64(len(denied)), p.Denials())
}

func TestAllow_NonAgentsGetNothing(t *testing.T) {
	p, _ := newPolicy()
	for _, c := range [][2]string{{"x", "x"}, {"", ""}, {agentA, agentB}, {"mon", ""}} {
		assert.False(t, p.Allow(c[0], c[1], "argus/v1/status/server", false))
		assert.False(t, p.Allow(c[0], c[1], mustID(agentA).Topic(topics.Activation), false))
	}
}

type fakeTokens struct{}

const tenantA, tenantB = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"

func (fakeTokens) Monitor(_ context.Context, tok string) (MonitorGrant, bool) {
	switch tok {
	case "mon":
		return MonitorGrant{TokenID: "tok-mon", OperatorID: "op-1"}, true
	case "mon-2":
		return MonitorGrant{TokenID: "tok-mon-2", OperatorID: "op-1", ExpiresAt: time.Now().Add(time.Hour)}, true
	case "mon-expired":
		return MonitorGrant{TokenID: "tok-old", OperatorID: "op-1", ExpiresAt: time.Now().Add(-time.Second)}, true
	}
	return MonitorGrant{}, false
}
func (fakeTokens) Viewer(_ context.Context, tok string) (ViewerGrant, bool) {
	switch tok {
	case "view-a":
		return ViewerGrant{TokenID: "tok-view-a", TenantID: tenantA}, true
	case "view-a2":
		return ViewerGrant{TokenID: "tok-view-a2", TenantID: tenantA}, true
	}
	return ViewerGrant{}, false
}

func TestWatchers(t *testing.T) {
	p, _ := newPolicy()
	p.Tokens = fakeTokens{}
	req := func(id, user, pass string) broker.ConnectRequest {
		return broker.ConnectRequest{ClientID: id, Username: user, Password: []byte(pass), CleanStart: true, ProtocolVersion: 5}
	}
	assert.True(t, p.Authenticate(req("monitor-grafana", MonitorUser, "mon")))
	assert.False(t, p.Authenticate(req("monitor-grafana", MonitorUser, "nope")))
	assert.False(t, p.Authenticate(req(agentA, MonitorUser, "mon")), "a watcher cannot use an agent's client id")
	assert.False(t, p.Authenticate(req("grafana", MonitorUser, "mon")), "monitors live in monitor-*")
	resumed := req("monitor-grafana", MonitorUser, "mon")
	resumed.CleanStart = false
	assert.False(t, p.Authenticate(resumed), "no watcher resumes a session")
	assert.True(t, p.Authenticate(req("viewer-"+tenantA+"-page", ViewerUserPrefix+tenantA, "view-a")))
	assert.False(t, p.Authenticate(req("viewer-"+tenantB+"-page", ViewerUserPrefix+tenantB, "view-a")), "a viewer token opens only its own tenant")
	assert.False(t, p.Authenticate(req("viewer-"+tenantB+"-page", ViewerUserPrefix+tenantA, "view-a")), "nor another tenant's client ids")
	assert.False(t, p.Authenticate(req("monitor-x", ViewerUserPrefix+tenantA, "view-a")))

	a := mustID(agentA)
	for _, c := range []struct {
		user, topic string
		write, want bool
	}{
		{MonitorUser, topics.StatusFilter, false, true},
		{MonitorUser, a.Status(), false, true},
		{MonitorUser, "$SYS/#", false, true},
		{MonitorUser, a.Status(), true, false},
		{MonitorUser, a.Topic(topics.Heartbeat), false, false},
		{MonitorUser, "#", false, false},
		{MonitorUser, "$share/g/" + topics.StatusFilter, false, false},
		{ViewerUserPrefix + tenantA, "argus/v1/status/tenants/" + tenantA + "/#", false, true},
		{ViewerUserPrefix + tenantA, "argus/v1/status/tenants/" + tenantA + "/remote-support", false, true},
		{ViewerUserPrefix + tenantA, "argus/v1/status/tenants/" + tenantB + "/#", false, false},
		{ViewerUserPrefix + tenantA, "argus/v1/status/tenants/+/remote-support", false, false},
		{ViewerUserPrefix + tenantA, topics.StatusFilter, false, false},
		{ViewerUserPrefix + tenantA, a.Status(), false, false},
		{ViewerUserPrefix + tenantA, "argus/v1/status/tenants/" + tenantA + "/remote-support", true, false},
		{ViewerUserPrefix + tenantA, mustTenant(tenantA).CommandFeed(), false, true},
		{ViewerUserPrefix + tenantA, mustTenant(tenantB).CommandFeed(), false, false},
		{ViewerUserPrefix + tenantA, "argus/v1/status/tenants/+/commands", false, false},
		{ViewerUserPrefix + tenantA, mustTenant(tenantA).CommandFeed(), true, false},
		{MonitorUser, mustTenant(tenantB).CommandFeed(), false, true},
		{agentA, mustTenant(tenantA).CommandFeed(), false, false},
	} {
		assert.Equal(t, c.want, p.Allow("w", c.user, c.topic, c.write), "%s %s write=%v", c.user, c.topic, c.write)
	}
}

func TestWarm_NoQueryPerConnectAndRevokedStaysOut(t *testing.T) {
	p, f := newPolicy()
	p.Revoke(agentB)
	require := assert.New(t)
	require.NoError(p.Warm(context.Background(), func(_ context.Context, each func(string, []byte, string)) error {
		each(agentA, credential.Hash("secret-a"), "t")
		each(agentB, credential.Hash("secret-b"), "t")
		return nil
	}))
	require.True(p.Authenticate(connect(agentA, agentA, "secret-a")))
	require.Equal(int64(0), f.calls.Load(), "served from the warmed cache")
	require.False(p.Authenticate(connect(agentB, agentB, "secret-b")), "a revoked agent is not warmed back in")
}

// Each monitor connection is remembered with the token it authenticated
// with, so revoking that token can end exactly those connections.
func TestMonitors_RememberTheirToken(t *testing.T) {
	p, _ := newPolicy()
	p.Tokens = fakeTokens{}
	req := func(id, pass string) broker.ConnectRequest {
		return broker.ConnectRequest{ClientID: id, Username: MonitorUser, Password: []byte(pass), CleanStart: true, ProtocolVersion: 5}
	}
	require.True(t, p.Authenticate(req("monitor-a", "mon")))
	require.True(t, p.Authenticate(req("monitor-b", "mon-2")))
	require.True(t, p.Authenticate(req("monitor-c", "mon")))
	assert.False(t, p.Authenticate(req("monitor-d", "mon-expired")), "an expired grant is refused")
	assert.False(t, p.Authenticate(req("monitor-e", "nope")))

	assert.ElementsMatch(t, []string{"monitor-a", "monitor-c"}, p.MonitorsWith("tok-mon"))
	assert.ElementsMatch(t, []string{"monitor-b"}, p.MonitorsWith("tok-mon-2", "tok-none"))
	assert.Empty(t, p.MonitorsWith("tok-old"))
	g, ok := p.Monitor("monitor-b")
	require.True(t, ok)
	assert.False(t, g.Expired(time.Now()))
	assert.True(t, g.Expired(g.ExpiresAt))
	assert.Len(t, p.Monitors(), 3)

	// A reconnect under the same client id with another token replaces the grant.
	require.True(t, p.Authenticate(req("monitor-a", "mon-2")))
	assert.ElementsMatch(t, []string{"monitor-c"}, p.MonitorsWith("tok-mon"))

	// Fresh grants survive a prune even before their client is registered.
	p.PruneMonitors(func(string) bool { return false })
	assert.Len(t, p.Monitors(), 3)
}

// Each viewer connection is remembered with the tenant token it
// authenticated with, so revoking one token ends only its connections.
func TestViewers_RememberTheirToken(t *testing.T) {
	p, _ := newPolicy()
	p.Tokens = fakeTokens{}
	req := func(id, pass string) broker.ConnectRequest {
		return broker.ConnectRequest{ClientID: id, Username: ViewerUserPrefix + tenantA, Password: []byte(pass), CleanStart: true, ProtocolVersion: 5}
	}
	require.True(t, p.Authenticate(req("viewer-"+tenantA+"-1", "view-a")))
	require.True(t, p.Authenticate(req("viewer-"+tenantA+"-2", "view-a2")))
	require.True(t, p.Authenticate(req("viewer-"+tenantA+"-3", "view-a")))
	assert.False(t, p.Authenticate(req("viewer-"+tenantA+"-4", "nope")))
	assert.ElementsMatch(t, []string{"viewer-" + tenantA + "-1", "viewer-" + tenantA + "-3"}, p.ViewersWith("tok-view-a"))
	assert.ElementsMatch(t, []string{"viewer-" + tenantA + "-2"}, p.ViewersWith("tok-view-a2"))
	assert.Empty(t, p.ViewersWith("tok-none"))
	p.PruneMonitors(func(string) bool { return false })
	assert.Len(t, p.ViewersWith("tok-view-a", "tok-view-a2"), 3, "fresh grants survive a prune")
}

func mustTenant(s string) topics.TenantID {
	id, err := topics.ParseTenantID(s)
	if err != nil {
		panic(err)
	}
	return id
}

// Agents whose credentials are not cached, connecting at once, wait on
// one read or two (the one in flight as they came, and the next), not one
// each: a node taking in thousands of another node's agents would
// otherwise hold every database connection it has.
func TestAuthenticate_ConcurrentLookupsShareReads(t *testing.T) {
	f := &fakeCreds{secrets: map[string]string{}, revoked: map[string]bool{}, gate: make(chan struct{})}
	const n = 200
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		f.secrets[ids[i]] = "secret-" + ids[i]
	}
	f.revoked[ids[1]] = true
	p := New(f, nil)

	results := make(chan bool, n)
	auth := func(id string) { results <- p.Authenticate(connect(id, id, "secret-"+id)) }
	go auth(ids[0])
	require.Eventually(t, func() bool { return f.calls.Load() == 1 }, 5*time.Second, time.Millisecond, "the first read is in flight")
	for _, id := range ids[1:] {
		go auth(id)
	}
	require.Eventually(t, func() bool {
		p.lmu.Lock()
		defer p.lmu.Unlock()
		return len(p.waiting) == n-1
	}, 5*time.Second, time.Millisecond, "the others wait behind the first read")
	close(f.gate)
	admitted := 0
	for range n {
		if <-results {
			admitted++
		}
	}
	assert.Equal(t, n-1, admitted, "every agent but the revoked one")
	assert.Equal(t, int64(2), f.calls.Load(), "two reads")
	assert.True(t, p.Authenticate(connect(ids[0], ids[0], "secret-"+ids[0])))
	assert.Equal(t, int64(2), f.calls.Load(), "then served from the cache")
}

// A read that fails admits none of the agents waiting on it, and the
// next connect reads again.
func TestAuthenticate_FailedReadAdmitsNone(t *testing.T) {
	p, f := newPolicy()
	f.fail = errors.New("database down")
	assert.False(t, p.Authenticate(connect(agentA, agentA, "secret-a")))
	f.fail = nil
	assert.True(t, p.Authenticate(connect(agentA, agentA, "secret-a")))
	assert.Equal(t, int64(2), f.calls.Load())
}
