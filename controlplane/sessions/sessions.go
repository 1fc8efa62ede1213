// Package sessions runs remote-support sessions: activation behind the
// consent and arm checks, the signed activation the agent must
// acknowledge, commands bound to one session, and every way a session
// ends (deactivation, expiry, kill switch, disarm, consent withdrawal,
// revocation).
//
// The database is the truth. Each state change commits with its two audit
// rows; what follows a commit (the broker ACL, the retained activation, the
// tenant's indicator) is derived from it, and rebuilt from it on start.
package sessions

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/rowcache"
	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/topics"
)

// Limits of a session.
const (
	DefaultTTL = 30 * time.Minute
	MaxTTL     = 120 * time.Minute
	MinTTL     = time.Second
)

// End reasons, as stored.
const (
	EndDeactivated      = "deactivated"
	EndExpired          = "expired"
	EndKillSwitch       = "agent_kill_switch"
	EndTenantDisarmed   = "tenant_disarmed"
	EndConsentWithdrawn = "consent_withdrawn"
	EndAgentRevoked     = "agent_revoked"
	EndNoAck            = "agent_did_not_acknowledge"
)

// Telemetry is looked up at each use, so it reports to the providers
// installed now (a test process runs several servers in turn).
func tracer() trace.Tracer { return otel.Tracer("argus/sessions") }

var (
	activationsCounter = telemetry.NewInstrument("argus/sessions", func(m metric.Meter) (metric.Int64Counter, error) {
		return m.Int64Counter("argus_activations", metric.WithDescription("Session activation attempts by code."))
	})
	commandsCounter = telemetry.NewInstrument("argus/sessions", func(m metric.Meter) (metric.Int64Counter, error) {
		return m.Int64Counter("argus_commands", metric.WithDescription("Commands by name and outcome."))
	})
	commandHistogram = telemetry.NewInstrument("argus/sessions", func(m metric.Meter) (metric.Float64Histogram, error) {
		return m.Float64Histogram("argus_command_duration", metric.WithUnit("s"),
			metric.WithDescription("Command round trip, API to agent and back."),
			metric.WithExplicitBucketBoundaries(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
	})
)

func activations() metric.Int64Counter        { return activationsCounter.Get() }
func commandsTotal() metric.Int64Counter      { return commandsCounter.Get() }
func commandSeconds() metric.Float64Histogram { return commandHistogram.Get() }

// Refusal is a refused request with a stable code; the API returns it.
type Refusal struct {
	Status  int
	Code    string
	Message string
}

func (r *Refusal) Error() string { return r.Code + ": " + r.Message }

func refuse(status int, code, msg string) *Refusal {
	return &Refusal{Status: status, Code: code, Message: msg}
}

// denied audits a refused attempt (both rows) and returns the refusal, or
// the error that kept it from being audited: nothing is refused unrecorded.
func (m *Manager) denied(ctx context.Context, e audit.Entry, r *Refusal) error {
	e.Outcome = audit.Denied
	detail := make(map[string]any, len(e.Detail)+1)
	for k, v := range e.Detail {
		detail[k] = v
	}
	detail["code"] = r.Code
	e.Detail = detail
	if err := audit.Write(context.WithoutCancel(ctx), m.Pool, e); err != nil {
		return err
	}
	return r
}

// Broker is what the manager needs of the broker.
type Broker interface {
	Publish(topic string, payload []byte, retain bool, qos byte, props *packets.Properties) error
	DropSubscription(clientID, filter string)
	Server() *mqtt.Server
}

// ACL opens and closes an agent's commands topic.
type ACL interface {
	SetActive(agentID string, active bool)
}

// Fleet says whether an agent is connected here and what it reports.
type Fleet interface {
	Online(agentID string) bool
	KillSwitch(agentID string) bool
}

// Options configure a Manager.
type Options struct {
	Pool   *pgxpool.Pool
	Key    ed25519.PrivateKey
	Broker Broker
	ACL    ACL
	Fleet  Fleet
	Log    *slog.Logger
	// AckTimeout bounds the wait for an agent's activation ack (5s).
	AckTimeout time.Duration
	// CommandTimeout bounds the wait for a command's result (30s).
	CommandTimeout time.Duration
	// SweepEvery is how often expired sessions are ended (1s).
	SweepEvery time.Duration
	// Disabled is remote support switched off: sessions left live from
	// before are ended at start, since none may be opened or used.
	Disabled bool
	// Commits groups the command path's audited transactions; nil means
	// each commits alone.
	Commits *audit.Committer
	// Rows, when set, keeps the sessions commands are checked against in
	// a cache it keeps fresh; nil means a query per command.
	Rows *rowcache.Listener
}

// Manager runs sessions on this node.
type Manager struct {
	Options

	mu       sync.Mutex
	live     map[string]*live // by agent id
	acks     map[string]chan topics.ActivationAckMsg
	results  map[string]chan topics.ResultMsg
	stop     chan struct{}
	stopped  chan struct{}
	inflight sync.WaitGroup
	rows     *rowcache.Cache[sessionRow]
}

// live is a session in force, as the broker side needs it.
type live struct {
	id, tenantID, agentID, operator string
	createdAt, expiresAt            time.Time
}

// New returns a Manager; Start it once the broker exists.
func New(o Options) *Manager {
	if o.AckTimeout == 0 {
		o.AckTimeout = 5 * time.Second
	}
	if o.CommandTimeout == 0 {
		o.CommandTimeout = 30 * time.Second
	}
	if o.SweepEvery == 0 {
		o.SweepEvery = time.Second
	}
	m := &Manager{
		Options: o,
		live:    map[string]*live{}, acks: map[string]chan topics.ActivationAckMsg{}, results: map[string]chan topics.ResultMsg{},
		stop: make(chan struct{}), stopped: make(chan struct{}),
	}
	if o.Rows != nil {
		m.rows = rowcache.New[sessionRow](o.Rows, "support_sessions", rowCacheTTL, rowCacheMax)
	}
	return m
}

// Start rebuilds the broker-side state from the database (ending what
// cannot be trusted), subscribes to acks and results, and starts the
// expiry sweeper.
func (m *Manager) Start(ctx context.Context) error {
	srv := m.Broker.Server()
	if err := srv.Subscribe(topics.AgentFilter(topics.ActivationAck), 10, m.onAck); err != nil {
		return err
	}
	if err := srv.Subscribe(topics.AgentFilter(topics.Results), 11, m.onResult); err != nil {
		return err
	}
	if err := m.restore(ctx); err != nil {
		return err
	}
	go m.sweep()
	return nil
}

// Stop ends the sweeper. Sessions stay live in the database: a server
// restart does not end them, and their agents enforce their expiry.
func (m *Manager) Stop() {
	close(m.stop)
	<-m.stopped
	m.inflight.Wait()
}

// restore is start-up: a session never acknowledged may have been cut off
// mid-activation, so it ends; an expired one ends; the rest are re-armed
// on the broker and their activations re-published (retained messages do
// not outlive a broker).
func (m *Manager) restore(ctx context.Context) error {
	rows, err := m.Pool.Query(ctx, `
		SELECT s.id, s.tenant_id, s.agent_id, o.name, s.created_at, s.expires_at, s.acked_at IS NOT NULL
		FROM support_sessions s JOIN operators o ON o.id = s.operator_id WHERE s.ended_at IS NULL`)
	if err != nil {
		return fmt.Errorf("sessions: restore: %w", err)
	}
	type row struct {
		l     live
		acked bool
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.l.id, &x.l.tenantID, &x.l.agentID, &x.l.operator, &x.l.createdAt, &x.l.expiresAt, &x.acked)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("sessions: restore: %w", err)
	}
	system := audit.Entry{Actor: "system"}
	for _, x := range list {
		switch {
		case m.Disabled:
			_, err = m.End(ctx, x.l.id, EndDeactivated, audit.Entry{Actor: "system", Reason: "remote support disabled"})
		case !x.acked:
			_, err = m.End(ctx, x.l.id, EndNoAck, system)
		case !x.l.expiresAt.After(time.Now()):
			_, err = m.End(ctx, x.l.id, EndExpired, system)
		default:
			l := x.l
			m.mu.Lock()
			m.live[l.agentID] = &l
			m.mu.Unlock()
			m.ACL.SetActive(l.agentID, true)
			m.publishActivation(&l, topics.StateActive, "")
		}
		if err != nil && !errors.Is(err, ErrEnded) {
			return err
		}
	}
	// Every tenant's indicator, so "nothing active" is said too.
	tenants, err := m.Pool.Query(ctx, "SELECT id FROM tenants")
	if err != nil {
		return fmt.Errorf("sessions: restore: %w", err)
	}
	ids, err := pgx.CollectRows(tenants, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("sessions: restore: %w", err)
	}
	for _, id := range ids {
		m.publishTenant(id)
	}
	return nil
}

// OnAgentConnected re-sends an agent its activation state as it connects:
// active for its live session, dormant otherwise.
func (m *Manager) OnAgentConnected(agentID string) {
	m.mu.Lock()
	l := m.live[agentID]
	m.mu.Unlock()
	if l != nil && l.expiresAt.After(time.Now()) {
		m.publishActivation(l, topics.StateActive, "")
		return
	}
	m.publishActivation(&live{agentID: agentID}, topics.StateDormant, "")
}

func (m *Manager) publishActivation(l *live, state, reason string) {
	id, err := topics.ParseAgentID(l.agentID)
	if err != nil {
		return
	}
	msg := topics.ActivationMsg{V: topics.Version, AgentID: l.agentID, State: state, IssuedAt: time.Now().UTC(), Reason: reason}
	if state == topics.StateActive {
		msg.TenantID, msg.SessionID, msg.Operator, msg.ExpiresAt = l.tenantID, l.id, l.operator, l.expiresAt.UTC()
	} else {
		msg.SessionID = l.id
	}
	b, err := topics.Sign(m.Key, topics.PurposeActivation, msg)
	if err != nil {
		m.Log.Error("sign activation", "err", err)
		return
	}
	if err := m.Broker.Publish(id.Topic(topics.Activation), b, true, 1, nil); err != nil {
		m.Log.Error("publish activation", "agent", l.agentID, "err", err)
	}
}

// TenantStatus is the retained live indicator of one tenant.
type TenantStatus struct {
	V        int             `json:"v"`
	TenantID string          `json:"tenant_id"`
	Active   bool            `json:"active"`
	Sessions []SessionStatus `json:"sessions"`
	// Today is every session of the tenant since midnight UTC.
	Today []SessionStatus `json:"today"`
	Time  time.Time       `json:"time"`
}

// SessionStatus is one live session in a tenant's indicator.
type SessionStatus struct {
	SessionID string     `json:"session_id"`
	AgentID   string     `json:"agent_id"`
	AgentName string     `json:"agent_name,omitempty"`
	Operator  string     `json:"operator"`
	Since     time.Time  `json:"since"`
	ExpiresAt time.Time  `json:"expires_at"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	EndReason string     `json:"end_reason,omitempty"`
}

// PublishTenant (re)publishes a tenant's indicator: for a new tenant, so
// "nothing active" is said from the start.
func (m *Manager) PublishTenant(tenantID string) { m.publishTenant(tenantID) }

func (m *Manager) publishTenant(tenantID string) {
	tid, err := topics.ParseTenantID(tenantID)
	if err != nil {
		return
	}
	st := TenantStatus{V: topics.Version, TenantID: tenantID, Sessions: []SessionStatus{}, Today: []SessionStatus{}, Time: time.Now().UTC()}
	names := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := m.Pool.Query(ctx, `SELECT s.id, s.agent_id, a.name, o.name, s.created_at, s.expires_at, s.ended_at, COALESCE(s.end_reason, '')
		FROM support_sessions s JOIN agents a ON a.id = s.agent_id JOIN operators o ON o.id = s.operator_id
		WHERE s.tenant_id = $1 AND s.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		ORDER BY s.created_at`, tenantID)
	if err == nil {
		st.Today, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (SessionStatus, error) {
			var x SessionStatus
			err := r.Scan(&x.SessionID, &x.AgentID, &x.AgentName, &x.Operator, &x.Since, &x.ExpiresAt, &x.EndedAt, &x.EndReason)
			names[x.AgentID] = x.AgentName
			return x, err
		})
	}
	if err != nil {
		// The indicator itself must still go out; the history is extra.
		m.Log.Warn("tenant session history", "tenant", tenantID, "err", err)
		st.Today = []SessionStatus{}
	}
	m.mu.Lock()
	for _, l := range m.live {
		if l.tenantID == tenantID {
			st.Sessions = append(st.Sessions, SessionStatus{SessionID: l.id, AgentID: l.agentID, AgentName: names[l.agentID], Operator: l.operator, Since: l.createdAt.UTC(), ExpiresAt: l.expiresAt.UTC()})
		}
	}
	m.mu.Unlock()
	st.Active = len(st.Sessions) > 0
	b, _ := json.Marshal(st)
	if err := m.Broker.Publish(tid.RemoteSupport(), b, true, 1, nil); err != nil {
		m.Log.Error("publish tenant status", "tenant", tenantID, "err", err)
	}
}

// record runs stmts and writes entries in one audited transaction:
// pipelined in a group commit when a committer is set, alone otherwise.
// Either way they commit whole.
func (m *Manager) record(ctx context.Context, stmts []audit.Stmt, entries ...audit.Entry) error {
	if m.Commits != nil {
		return m.Commits.Exec(ctx, stmts, entries...)
	}
	return pgx.BeginFunc(ctx, m.Pool, func(tx pgx.Tx) error {
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st.SQL, st.Args...); err != nil {
				return err
			}
		}
		for _, e := range entries {
			if _, err := audit.Record(ctx, tx, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// LiveCount is how many sessions are live on this node.
func (m *Manager) LiveCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

// Live returns the live session of an agent on this node, if any.
func (m *Manager) Live(agentID string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.live[agentID]
	if !ok {
		return "", false
	}
	return l.id, true
}

func (m *Manager) sweep() {
	defer close(m.stopped)
	t := time.NewTicker(m.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		rows, err := m.Pool.Query(ctx, "SELECT id FROM support_sessions WHERE ended_at IS NULL AND expires_at <= now()")
		var ids []string
		if err == nil {
			ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			m.Log.Warn("session sweep", "err", err)
		}
		for _, id := range ids {
			if _, err := m.End(ctx, id, EndExpired, audit.Entry{Actor: "system"}); err != nil && !errors.Is(err, ErrEnded) {
				m.Log.Error("end expired session", "session", id, "err", err)
			}
		}
		cancel()
	}
}

// onAck receives agents' activation acks: answers for waiting
// activations, and the kill-switch notice that ends a session.
func (m *Manager) onAck(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	id, kind, ok := topics.ParseAgentTopic(pk.TopicName)
	if !ok || kind != topics.ActivationAck || pk.Origin != id.String() {
		return
	}
	var ack topics.ActivationAckMsg
	if err := topics.Decode(pk.Payload, topics.MaxEnvelope, &ack); err != nil || ack.AgentID != id.String() {
		return
	}
	m.mu.Lock()
	if ch, ok := m.acks[ack.SessionID]; ok && ack.SessionID != "" {
		select {
		case ch <- ack:
		default:
		}
	}
	l := m.live[id.String()]
	m.mu.Unlock()
	if l == nil || ack.State != topics.StateDormant || (ack.SessionID != "" && ack.SessionID != l.id) {
		return
	}
	// The agent is dormant while its session is live: it ended it itself.
	reason := ""
	switch ack.Error {
	case "agent_kill_switch", "agent_kill_switch_engaged":
		reason = EndKillSwitch
	case "expired":
		reason = EndExpired
	default:
		return
	}
	m.inflight.Add(1)
	go func() {
		defer m.inflight.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		actor := audit.Entry{Actor: "agent:" + id.String()}
		if _, err := m.End(ctx, l.id, reason, actor); err != nil && !errors.Is(err, ErrEnded) {
			m.Log.Error("end session on agent notice", "session", l.id, "err", err)
		}
	}()
}

func (m *Manager) onResult(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	id, kind, ok := topics.ParseAgentTopic(pk.TopicName)
	if !ok || kind != topics.Results || pk.Origin != id.String() {
		return
	}
	var res topics.ResultMsg
	if err := topics.Decode(pk.Payload, MaxResult, &res); err != nil || res.AgentID != id.String() {
		return
	}
	m.mu.Lock()
	ch, ok := m.results[res.CommandID]
	m.mu.Unlock()
	if ok {
		select {
		case ch <- res:
		default:
		}
	}
}
