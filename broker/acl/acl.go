// Package acl is the broker's access policy: who may connect, and which
// topic each principal may publish to, subscribe to, and be delivered.
// It is the single source of truth for broker access, and it takes every
// topic string from package topics.
//
// It denies by default. An agent authenticates with its id as both client
// id and username and its secret as password; it may publish only to its
// own heartbeat, manifest, activation/ack and results topics, subscribe
// only to its own activation topic, and subscribe to (and be delivered) its
// own commands topic only while it is active. Wildcards, $SYS, $share and
// every other agent's topics are refused, on subscribe and on delivery.
package acl

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/internal/credential"
	"github.com/argus-remote/argus/topics"
)

// Credentials finds agents' stored credentials.
type Credentials interface {
	// Credentials calls each for every agent of ids it holds a
	// credential for, revoked or not.
	Credentials(ctx context.Context, ids []string, each func(id string, hash []byte, revoked bool, tenantID string)) error
}

// Tokens checks the credentials of read-only watchers: monitors (an
// operator token with the monitor scope) and tenant viewers.
type Tokens interface {
	Monitor(ctx context.Context, token string) (MonitorGrant, bool)
	Viewer(ctx context.Context, token string) (ViewerGrant, bool)
}

// ViewerGrant is what a tenant viewer's connection was admitted with: the
// tenant token behind it, so revoking that token ends exactly its
// connections.
type ViewerGrant struct {
	TokenID  string
	TenantID string
}

// MonitorGrant is what a monitor's connection was admitted with: the
// token behind it, so the connection can be ended when that token is
// revoked, its operator disabled, or its life runs out.
type MonitorGrant struct {
	TokenID    string
	OperatorID string
	// ExpiresAt is zero for a token that does not expire.
	ExpiresAt time.Time
}

// Expired reports whether the grant's token has expired at now.
func (g MonitorGrant) Expired(now time.Time) bool {
	return !g.ExpiresAt.IsZero() && !now.Before(g.ExpiresAt)
}

// monitorConn is a grant and when it was made.
type monitorConn struct {
	MonitorGrant
	at time.Time
}

// viewerConn is a viewer grant and when it was made.
type viewerConn struct {
	ViewerGrant
	at time.Time
}

// Watcher usernames: a monitor connects as "monitor"; a tenant viewer as
// "viewer:<tenant id>", which the token must belong to.
const (
	MonitorUser      = "monitor"
	ViewerUserPrefix = "viewer:"
)

// Denial describes one refused access, for counting and auditing.
type Denial struct {
	ClientID string
	AgentID  string // empty when the client is not an agent
	Topic    string
	Write    bool
	// Why, when set, says what was refused beyond the topic: a message
	// that passed the ACL but claimed what is not its sender's own.
	Why string
}

// tracer is looked up at each use: a provider installed later (a second
// server in one test process) must be the one that records.
func tracer() trace.Tracer { return otel.Tracer("argus/broker") }

// cacheTTL bounds how long a looked-up credential is trusted without
// asking the database again; revocation invalidates it at once.
const cacheTTL = 15 * time.Minute

// maxPassword bounds what is hashed per CONNECT.
const maxPassword = 256

type cred struct {
	hash    []byte
	tenant  string
	fetched time.Time
}

// Policy implements broker.Policy.
type Policy struct {
	creds Credentials
	// Tokens, when set, admits monitors and tenant viewers.
	Tokens Tokens
	log    *slog.Logger
	// OnDeny, when set, is told of every refusal. It runs in the broker's
	// goroutines and must not block.
	OnDeny func(Denial)

	mu      sync.RWMutex
	cache   map[string]cred
	revoked map[string]bool
	active  map[string]bool
	// monitors holds, by client id, the grant each monitor connection
	// authenticated with (the latest CONNECT for that id).
	monitors map[string]monitorConn
	// viewers holds, by client id, the tenant token each viewer
	// connection authenticated with.
	viewers map[string]viewerConn

	denials atomic.Int64

	// lmu guards the lookups waiting for a credential read (lookup.go).
	lmu     sync.Mutex
	waiting map[string][]chan lookupResult
	reading bool
}

// New returns a Policy that checks agent credentials against creds.
func New(creds Credentials, log *slog.Logger) *Policy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Policy{creds: creds, log: log, cache: map[string]cred{}, revoked: map[string]bool{}, active: map[string]bool{}, waiting: map[string][]chan lookupResult{},
		monitors: map[string]monitorConn{}, viewers: map[string]viewerConn{}}
}

var _ broker.Policy = (*Policy)(nil)

// Authenticate admits an agent presenting its own id and current secret,
// on a clean session without a will message.
func (p *Policy) Authenticate(r broker.ConnectRequest) bool {
	if r.Username == MonitorUser || strings.HasPrefix(r.Username, ViewerUserPrefix) {
		return p.authenticateWatcher(r)
	}
	id, err := topics.ParseAgentID(r.Username)
	if err != nil || r.ClientID != r.Username {
		return false
	}
	// A resumed session would inherit subscriptions without a subscribe
	// check, and a will skips the write check: agents get neither.
	if !r.CleanStart || r.SessionExpiry != 0 || r.HasWill || r.ProtocolVersion != 5 {
		return false
	}
	if len(r.Password) == 0 || len(r.Password) > maxPassword {
		return false
	}
	c, ok := p.lookup(id.String())
	if !ok {
		return false
	}
	return credential.Verify(c.hash, string(r.Password))
}

// authenticateWatcher admits a read-only monitor or viewer. Its client id
// may not look like an agent's, so it can never take over an agent's
// session.
func (p *Policy) authenticateWatcher(r broker.ConnectRequest) bool {
	// Clean sessions only, and a client id in the principal's own
	// namespace ("monitor-...", "viewer-<tenant id>-..."): no watcher can
	// take over an agent's session, or another tenant's viewer's.
	if p.Tokens == nil || len(r.ClientID) > 128 || r.HasWill || !r.CleanStart || r.SessionExpiry != 0 || len(r.Password) > maxPassword {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r.Username == MonitorUser {
		if !strings.HasPrefix(r.ClientID, "monitor-") || len(r.ClientID) == len("monitor-") {
			return false
		}
		g, ok := p.Tokens.Monitor(ctx, string(r.Password))
		if !ok || g.Expired(time.Now()) {
			return false
		}
		p.mu.Lock()
		p.monitors[r.ClientID] = monitorConn{MonitorGrant: g, at: time.Now()}
		p.mu.Unlock()
		return true
	}
	want, err := topics.ParseTenantID(strings.TrimPrefix(r.Username, ViewerUserPrefix))
	if err != nil {
		return false
	}
	if prefix := "viewer-" + want.String() + "-"; !strings.HasPrefix(r.ClientID, prefix) || len(r.ClientID) == len(prefix) {
		return false
	}
	g, ok := p.Tokens.Viewer(ctx, string(r.Password))
	if !ok || g.TenantID != want.String() {
		return false
	}
	p.mu.Lock()
	p.viewers[r.ClientID] = viewerConn{ViewerGrant: g, at: time.Now()}
	p.mu.Unlock()
	return true
}

func (p *Policy) lookup(id string) (cred, bool) {
	p.mu.RLock()
	c, cached := p.cache[id]
	revoked := p.revoked[id]
	p.mu.RUnlock()
	if revoked {
		return cred{}, false
	}
	if cached && time.Since(c.fetched) < cacheTTL {
		return c, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx, span := tracer().Start(ctx, "broker.authenticate", trace.WithAttributes(attribute.String("argus.agent_id", id)))
	defer span.End()
	r := p.fetch(ctx, id)
	if r.err != nil || !r.found {
		p.log.Debug("agent credential lookup failed", "agent", id, "found", r.found, "err", r.err)
		return cred{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.c.revoked {
		p.revoked[id] = true
	}
	// A revocation that raced this lookup wins.
	if p.revoked[id] {
		delete(p.cache, id)
		return cred{}, false
	}
	c = cred{hash: r.c.hash, tenant: r.c.tenant, fetched: time.Now()}
	p.cache[id] = c
	return c, true
}

// Warm loads every live agent's credential at once, so a fleet
// reconnecting after a restart is checked from memory rather than with a
// query per connect. Revocation still wins (Revoke, and the revoked flag
// read here).
func (p *Policy) Warm(ctx context.Context, all func(ctx context.Context, each func(id string, hash []byte, tenant string)) error) error {
	now := time.Now()
	loaded := map[string]cred{}
	if err := all(ctx, func(id string, hash []byte, tenant string) {
		loaded[id] = cred{hash: hash, tenant: tenant, fetched: now}
	}); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, c := range loaded {
		if !p.revoked[id] {
			p.cache[id] = c
		}
	}
	return nil
}

// Revoke refuses the agent from now on: its cached credential is dropped
// and every check for it fails, before the database is asked again.
func (p *Policy) Revoke(agentID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.cache, agentID)
	delete(p.active, agentID)
	p.revoked[agentID] = true
}

// Forget drops a cached credential so the next CONNECT reads the database.
func (p *Policy) Forget(agentID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.cache, agentID)
}

// Tenant returns the tenant of an agent that has authenticated here.
func (p *Policy) Tenant(agentID string) (string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	c, ok := p.cache[agentID]
	return c.tenant, ok
}

// SetActive opens (true) or closes (false) the agent's commands topic.
func (p *Policy) SetActive(agentID string, active bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if active {
		p.active[agentID] = true
	} else {
		delete(p.active, agentID)
	}
}

// Active reports whether the agent's commands topic is open.
func (p *Policy) Active(agentID string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.active[agentID]
}

// ActiveAgents lists the agents whose commands topic is open.
func (p *Policy) ActiveAgents() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	ids := make([]string, 0, len(p.active))
	for id := range p.active {
		ids = append(ids, id)
	}
	return ids
}

// Monitor returns the grant the monitor connection with this client id
// authenticated with.
func (p *Policy) Monitor(clientID string) (MonitorGrant, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	m, ok := p.monitors[clientID]
	return m.MonitorGrant, ok
}

// Monitors returns a copy of every monitor grant, by client id.
func (p *Policy) Monitors() map[string]MonitorGrant {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make(map[string]MonitorGrant, len(p.monitors))
	for id, m := range p.monitors {
		out[id] = m.MonitorGrant
	}
	return out
}

// MonitorsWith lists the client ids of the monitor connections that
// authenticated with any of these tokens.
func (p *Policy) MonitorsWith(tokenIDs ...string) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var ids []string
	for id, m := range p.monitors {
		if slices.Contains(tokenIDs, m.TokenID) {
			ids = append(ids, id)
		}
	}
	return ids
}

// Viewers returns a copy of every viewer grant, by client id.
func (p *Policy) Viewers() map[string]ViewerGrant {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make(map[string]ViewerGrant, len(p.viewers))
	for id, v := range p.viewers {
		out[id] = v.ViewerGrant
	}
	return out
}

// ViewersWith lists the client ids of the viewer connections that
// authenticated with any of these tenant tokens.
func (p *Policy) ViewersWith(tokenIDs ...string) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var ids []string
	for id, v := range p.viewers {
		if slices.Contains(tokenIDs, v.TokenID) {
			ids = append(ids, id)
		}
	}
	return ids
}

// monitorGrace is how long a grant is kept for a client not (or not yet)
// connected: a CONNECT is authenticated before its client is registered.
const monitorGrace = 30 * time.Second

// PruneMonitors drops the grants of watchers (monitors and viewers) no
// longer connected, keeping those made in the last 30 seconds.
func (p *Policy) PruneMonitors(connected func(clientID string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, m := range p.monitors {
		if time.Since(m.at) > monitorGrace && !connected(id) {
			delete(p.monitors, id)
		}
	}
	for id, v := range p.viewers {
		if time.Since(v.at) > monitorGrace && !connected(id) {
			delete(p.viewers, id)
		}
	}
}

// Revoked reports whether the agent is refused as revoked.
func (p *Policy) Revoked(agentID string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.revoked[agentID]
}

// Refuse counts and reports a refusal decided past the policy: a publish
// it allowed whose content claimed another principal's session or
// command.
func (p *Policy) Refuse(d Denial) {
	p.denials.Add(1)
	if p.OnDeny != nil {
		p.OnDeny(d)
	}
}

// Denials returns how many accesses have been refused.
func (p *Policy) Denials() int64 { return p.denials.Load() }

// Allow decides a publish (write), a subscribe (the raw filter) and every
// delivery (the concrete topic). It is in-memory only.
func (p *Policy) Allow(clientID, username, topic string, write bool) bool {
	ok, agent := p.allow(clientID, username, topic, write)
	if !ok {
		p.denials.Add(1)
		if p.OnDeny != nil {
			p.OnDeny(Denial{ClientID: clientID, AgentID: agent, Topic: topic, Write: write})
		}
	}
	return ok
}

func (p *Policy) allow(clientID, username, topic string, write bool) (bool, string) {
	// Watchers read status topics and nothing else; they never publish.
	if username == MonitorUser {
		return !write && !strings.HasPrefix(topic, "$share") &&
			(strings.HasPrefix(topic, topics.StatusRoot) || strings.HasPrefix(topic, "$SYS/")), ""
	}
	if rest, ok := strings.CutPrefix(username, ViewerUserPrefix); ok {
		tid, err := topics.ParseTenantID(rest)
		return err == nil && !write && strings.HasPrefix(topic, tid.StatusPrefix()), ""
	}
	id, err := topics.ParseAgentID(username)
	if err != nil || clientID != username {
		return false, ""
	}
	agent := id.String()
	p.mu.RLock()
	revoked, active := p.revoked[agent], p.active[agent]
	p.mu.RUnlock()
	if revoked {
		return false, agent
	}
	// Exact topics only: a filter with a wildcard, a $share prefix or
	// another agent's id never parses as this agent's topic.
	tid, kind, ok := topics.ParseAgentTopic(topic)
	if !ok || tid != id {
		return false, agent
	}
	if write {
		return slices.Contains(topics.AgentPublishes, kind), agent
	}
	switch kind {
	case topics.Activation:
		return true, agent
	case topics.Commands:
		return active, agent
	}
	return false, agent
}
