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
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/rowcache"
	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/topics"
)

// Limits of a session.
const (
	DefaultTTL = 30 * time.Minute
	MaxTTL     = 120 * time.Minute
	MinTTL     = time.Second
	// MaxReason is the longest reason a session may give, in characters
	// (the database's CHECK on support_sessions.reason).
	MaxReason = 1024
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
	// EndUnreachable is an activation the node holding the agent did not
	// open: it gave no answer, or no longer held the agent.
	EndUnreachable = "agent_unreachable"
	// EndTenantEnded is a session the tenant ended from its page, with a
	// tenant token carrying the end right.
	EndTenantEnded = "tenant_ended"
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
	// CommandID names the command the refusal is about, when the
	// operator needs it to look the command up.
	CommandID string
}

// CodeCompletionNotRecorded is a command that was sent (and may have run)
// whose completion could not be written: the operator gets its id, and
// the requested action is on record.
const CodeCompletionNotRecorded = "completion_not_recorded"

// notSent is a command whose request could not be recorded: nothing was
// sent, since nothing may reach an agent before its audit row commits.
func notSent() *Refusal {
	return refuse(http.StatusServiceUnavailable, "unavailable", "the command could not be recorded, so it was not sent; try again")
}

func notRecorded(cmdID string) *Refusal {
	return &Refusal{Status: http.StatusInternalServerError, Code: CodeCompletionNotRecorded, CommandID: cmdID,
		Message: "the command was sent but its completion could not be recorded; what the agent did is unknown. Look it up by its id: " + cmdID}
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

// Refuse audits a support request refused before it reached the manager
// (its body could not be read) and returns the refusal, or the error that
// kept it from being audited.
func (m *Manager) Refuse(ctx context.Context, e audit.Entry, status int, code, message string) error {
	if id, ok := input.ID(e.SessionID); ok {
		e.SessionID = id
	} else if e.SessionID != "" {
		e.Detail = map[string]any{"session": e.SessionID}
		e.SessionID = ""
	}
	return m.denied(ctx, e, refuse(status, code, message))
}

// Broker is what the manager needs of the broker.
type Broker interface {
	Publish(topic string, payload []byte, retain bool, qos byte, props *packets.Properties) error
	DropSubscription(clientID, filter string)
	Disconnect(clientID string, code packets.Code) bool
	Server() *mqtt.Server
}

// ACL opens and closes an agent's commands topic, and refuses revoked
// agents.
type ACL interface {
	SetActive(agentID string, active bool)
	// ActiveAgents lists the agents whose commands topic is open.
	ActiveAgents() []string
	Revoke(agentID string)
	Revoked(agentID string) bool
}

// Fleet says whether an agent is connected here and what it reports.
type Fleet interface {
	Online(agentID string) bool
	KillSwitch(agentID string) bool
	// GoneSince is when the agent last disconnected from this node, if it
	// is not connected now.
	GoneSince(agentID string) (time.Time, bool)
	// Stale reports an agent connected here that has missed two
	// heartbeats, and when it was last heard from.
	Stale(agentID string) (bool, time.Time)
}

// Options configure a Manager.
type Options struct {
	Pool *pgxpool.Pool
	// Key signs activations and commands, unless Signer is set: then
	// Signer's key at each signing (it changes when the key rotates).
	Key    ed25519.PrivateKey
	Signer func() ed25519.PrivateKey
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
	// ReconnectWait bounds the wait, when a command arrives, for an agent
	// that is reconnecting (gone a moment ago, or the server has just
	// started) to be back and subscribed (3s). An agent gone for longer
	// is refused at once.
	ReconnectWait time.Duration
	// Disabled is remote support switched off: sessions left live from
	// before are ended at start, since none may be opened or used.
	Disabled bool
	// Commits groups the command path's audited transactions; nil means
	// each commits alone.
	Commits *audit.Committer
	// Rows, when set, keeps the sessions commands are checked against in
	// a cache it keeps fresh; nil means a query per command.
	Rows *rowcache.Listener
	// CheckEvery is how often the broker's state is compared with the
	// database and any drift repaired (3s).
	CheckEvery time.Duration
	// Refused, when set, is told of an agent's message that claims what
	// is not its own (another agent's session or command): counted and
	// audited as the ACL's refusals are. It must not block.
	Refused func(agentID, topic, why string)
	// AfterCommit, when set (by tests), runs between an activation's
	// commit and its broker steps, to widen the window an end can race.
	AfterCommit func(sessionID string)
	// Fenced, when set, reports that this node holds no valid lease in
	// the cluster: it delivers no activation and no command then.
	Fenced func() bool
	// Unsigned, when set, reports why this node holds no live signing
	// key's private half (nil when it does): what it signed no agent would
	// accept, so it delivers nothing either.
	Unsigned func() error
	// Ended, when set, is told of every end this node commits, after its
	// broker steps here, so the other nodes apply it too (a broadcast).
	Ended func(ended []Ended)
	// AgentStale, when set, reports an agent connected but silent
	// wherever in the cluster it is connected, for the tenant's
	// indicator; nil means this node's fleet.
	AgentStale func(agentID string) bool
	// Node is this node's id, as agents' presence names it: an agent
	// that arrives from another node with its session is audited as
	// moved (moved.go).
	Node string
	// Cluster is that other nodes may exist: an unacknowledged session
	// may be another node's activation in progress, not this node's to
	// end at start (the sweep ends it once past unackedGrace).
	Cluster bool
	// Route reaches agents held by other nodes; nil is a node alone.
	Route Router
}

// Manager runs sessions on this node.
type Manager struct {
	Options

	started  time.Time
	awaiting atomic.Int64 // commands waiting for their agent
	mu       sync.Mutex
	runs     map[string]bool   // commands rows in flight here, by id
	live     map[string]*live  // by agent id
	acks     map[string]waiter // by session id
	results  map[string]waiter // by command id
	stop     chan struct{}
	stopped  chan struct{}
	checked  chan struct{}
	// workersRun says Start got as far as its workers: a start that failed
	// before has nothing for Stop or FlushFeeds to wait for.
	workersRun bool
	workers    sync.WaitGroup
	rows       *rowcache.Cache[sessionRow]
	// checkMu serialises state checks; revokedSince is where the next
	// one looks for revocations.
	checkMu      sync.Mutex
	revokedSince time.Time
	// feed holds each tenant's recent commands, newest first, and
	// feedDirty the tenants whose feed is still to be published; feedWake
	// tells publishFeeds, which closes feedDone as it stops (feed.go).
	feedMu    sync.Mutex
	feed      map[string][]topics.FeedEntry
	feedDirty map[string]bool
	feedWake  chan struct{}
	feedFlush chan chan struct{}
	feedDone  chan struct{}
	// ran is signalled as a command in flight here finishes (drain.go).
	ran chan struct{}
	// draining is set when this node starts sending its agents away;
	// exchanging counts commands being exchanged with agents here.
	draining   atomic.Bool
	exchanging atomic.Int64
	// arrived queues the agents connected here whose sessions are still
	// to be read (moved.go); arriveDone closes when its worker stops.
	arrived    arrivals
	arriveDone chan struct{}
}

// live is a session in force, as the broker side needs it.
type live struct {
	id, tenantID, agentID, operator string
	createdAt, expiresAt            time.Time
	// pending is an activation not yet committed: its entry holds the
	// agent so no other activation takes it, and an end that commits
	// before its broker steps run finds it.
	pending bool
	// ended is set (under mu) when AfterEnd takes the entry away; an
	// activation that finds it set after its broker steps undoes them.
	ended bool
	// restored is a session read at start whose activation has not been
	// sent yet: its agent may arrive from another node, and the move is
	// audited before the agent hears of its session here (takeOver).
	restored bool
}

// waiter is an activation waiting for its ack, or a command for its
// result: only the agent it was sent to, for that session, may answer.
type waiter struct {
	agentID, sessionID string
	acks               chan topics.ActivationAckMsg
	results            chan topics.ResultMsg
	// gone is told when the agent disconnects with the command in flight.
	gone chan struct{}
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
	if o.CheckEvery == 0 {
		o.CheckEvery = 3 * time.Second
	}
	if o.ReconnectWait == 0 {
		o.ReconnectWait = 3 * time.Second
	}
	m := &Manager{
		Options: o,
		started: time.Now(), runs: map[string]bool{}, ran: make(chan struct{}, 1),
		arrived: arrivals{pending: map[string]string{}, wake: make(chan struct{}, 1)}, arriveDone: make(chan struct{}),
		live: map[string]*live{}, acks: map[string]waiter{}, results: map[string]waiter{}, feed: map[string][]topics.FeedEntry{},
		feedDirty: map[string]bool{}, feedWake: make(chan struct{}, 1), feedFlush: make(chan chan struct{}), feedDone: make(chan struct{}),
		stop: make(chan struct{}), stopped: make(chan struct{}), checked: make(chan struct{}),
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
	// Revocations before now are already in the ACL (its credentials are
	// loaded without revoked agents); the check looks from a little before.
	m.revokedSince = time.Now().Add(-revocationOverlap)
	if err := m.restore(ctx); err != nil {
		return err
	}
	// Commands cut off by the last stop are settled now, not a check later.
	if err := m.interruptOverdue(ctx); err != nil {
		return fmt.Errorf("sessions: interrupted commands: %w", err)
	}
	m.workersRun = true
	go m.sweep()
	go m.checkLoop()
	go m.arrive()
	go m.publishFeeds()
	return nil
}

// Stop ends the sweeper and the drift check. Sessions stay live in the
// database: a server restart does not end them, and their agents enforce
// their expiry.
func (m *Manager) Stop() {
	if !m.workersRun {
		return
	}
	close(m.stop)
	<-m.stopped
	<-m.checked
	<-m.arriveDone
	<-m.feedDone
	m.workers.Wait()
}

// restore is start-up: a session never acknowledged may have been cut off
// mid-activation, so it ends; an expired one ends; the rest are kept and
// their commands topics opened. Their activations are sent once each
// agent's connection is recorded (takeOver): an agent arriving from
// another node must not hear of its session here before agent.moved is
// on record.
func (m *Manager) restore(ctx context.Context) error {
	list, err := m.liveSessions(ctx, "TRUE")
	if err != nil {
		return fmt.Errorf("sessions: restore: %w", err)
	}
	system := audit.Entry{Actor: "system"}
	for _, x := range list {
		switch {
		case m.Disabled:
			_, err = m.End(ctx, x.l.id, EndDeactivated, audit.Entry{Actor: "system", Reason: "remote support disabled"})
		case !x.acked && m.Cluster && time.Since(x.l.createdAt) < m.unackedGrace():
			// Another node may be waiting for its ack right now.
		case !x.acked:
			_, err = m.End(ctx, x.l.id, EndNoAck, system)
		case !x.l.expiresAt.After(time.Now()):
			_, err = m.End(ctx, x.l.id, EndExpired, system)
		default:
			l := x.l
			l.restored = true
			m.mu.Lock()
			m.live[l.agentID] = &l
			m.mu.Unlock()
			m.ACL.SetActive(l.agentID, true)
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

// liveRow is a live session as restore and takeOver read it.
type liveRow struct {
	l     live
	acked bool
}

// liveSessions reads the live sessions matching where (a condition on
// support_sessions s, with args).
func (m *Manager) liveSessions(ctx context.Context, where string, args ...any) ([]liveRow, error) {
	rows, err := m.Pool.Query(ctx, `
		SELECT s.id, s.tenant_id, s.agent_id, o.name, s.created_at, s.expires_at, s.acked_at IS NOT NULL
		FROM support_sessions s JOIN operators o ON o.id = s.operator_id WHERE s.ended_at IS NULL AND `+where, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (liveRow, error) {
		var x liveRow
		err := r.Scan(&x.l.id, &x.l.tenantID, &x.l.agentID, &x.l.operator, &x.l.createdAt, &x.l.expiresAt, &x.acked)
		return x, err
	})
}

// rearm opens a live, acknowledged session's commands topic on this
// node's broker and re-publishes its signed activation, retained (a
// retained message does not outlive a broker, nor cross to another
// node's): when an agent's session comes to this node with the agent,
// or is found here at start (takeOver).
func (m *Manager) rearm(l *live) {
	m.ACL.SetActive(l.agentID, true)
	m.publishActivation(l, topics.StateActive, "")
}

// OnAgentConnected re-sends an agent its activation as it connects, when
// this node has its live session already (a reconnect). A session
// restored at start waits for takeOver, which audits a move first.
// Anything else is decided once the connection is
// recorded (OnAgentPresent): the database may hold a session this node
// has not seen, and a dormant state sent now would end it on the agent.
func (m *Manager) OnAgentConnected(agentID string) {
	m.mu.Lock()
	var l live
	if p := m.live[agentID]; p != nil && !p.pending && !p.restored {
		l = *p
	}
	m.mu.Unlock()
	if l.id != "" && l.expiresAt.After(time.Now()) {
		m.publishActivation(&l, topics.StateActive, "")
	}
}

// fenced reports whether this node must deliver nothing to agents.
func (m *Manager) fenced() bool { return m.withheld() != nil }

// withheld is the refusal of anything that would reach an agent through
// this node, or nil when it may deliver.
func (m *Manager) withheld() *Refusal {
	if m.Fenced != nil && m.Fenced() {
		return refuse(http.StatusServiceUnavailable, CodeNodeFenced, "this server has lost its place in the cluster and delivers nothing; try again through another")
	}
	if m.Unsigned != nil && m.Unsigned() != nil {
		return refuse(http.StatusServiceUnavailable, CodeSigningKeyMissing,
			"this server holds the private half of no live command-signing key and delivers nothing; try again through another (its log names the key file to copy)")
	}
	return nil
}

// CodeNodeFenced refuses what would reach an agent through a node that
// has lost its lease in the cluster.
const CodeNodeFenced = "node_fenced"

// CodeSigningKeyMissing refuses what would reach an agent through a node
// that holds no live signing key's file: the key was rotated and retired,
// and the new key's file was not copied into this node's key directory.
const CodeSigningKeyMissing = "signing_key_missing"

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
	if state == topics.StateActive && m.fenced() {
		m.Log.Warn("activation not sent: this node is fenced", "agent", l.agentID, "session", l.id)
		return
	}
	b, err := topics.Sign(m.key(), topics.PurposeActivation, msg)
	if err != nil {
		m.Log.Error("sign activation", "err", err)
		return
	}
	if err := m.Broker.Publish(id.Topic(topics.Activation), b, true, 1, nil); err != nil {
		m.Log.Error("publish activation", "agent", l.agentID, "err", err)
	}
}

// key is the key to sign with now.
func (m *Manager) key() ed25519.PrivateKey {
	if m.Signer != nil {
		return m.Signer()
	}
	return m.Key
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
	// AgentStale is a live session's agent still connected but silent:
	// it has missed two heartbeats.
	AgentStale bool `json:"agent_stale,omitempty"`
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The indicator is the database's, whichever node publishes it: a
	// session opened through another node is live here too. Its time is
	// the database's clock, read before the sessions are, so of two
	// nodes' indicators the later-timed one saw every commit the other
	// saw (the cluster's nodes keep the latest).
	err = m.Pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&st.Time)
	var rows pgx.Rows
	if err == nil {
		rows, err = m.Pool.Query(ctx, `SELECT s.id, s.agent_id, a.name, o.name, s.created_at, s.expires_at, s.ended_at, COALESCE(s.end_reason, ''),
			s.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		FROM support_sessions s JOIN agents a ON a.id = s.agent_id JOIN operators o ON o.id = s.operator_id
		WHERE s.tenant_id = $1 AND (s.ended_at IS NULL OR s.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
		ORDER BY s.created_at`, tenantID)
	}
	var list []SessionStatus
	var today []bool
	if err == nil {
		list, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (SessionStatus, error) {
			var x SessionStatus
			var isToday bool
			err := r.Scan(&x.SessionID, &x.AgentID, &x.AgentName, &x.Operator, &x.Since, &x.ExpiresAt, &x.EndedAt, &x.EndReason, &isToday)
			today = append(today, isToday)
			return x, err
		})
	}
	if err == nil {
		for i, x := range list {
			if today[i] {
				st.Today = append(st.Today, x)
			}
			if x.EndedAt == nil {
				x.Since, x.ExpiresAt = x.Since.UTC(), x.ExpiresAt.UTC()
				x.EndReason = ""
				st.Sessions = append(st.Sessions, x)
			}
		}
	} else {
		// The indicator itself must still go out: from what this node
		// holds, timed by its own clock.
		m.Log.Warn("tenant sessions", "tenant", tenantID, "err", err)
		st.Time = time.Now().UTC()
		m.mu.Lock()
		for _, l := range m.live {
			if l.tenantID == tenantID && !l.pending {
				st.Sessions = append(st.Sessions, SessionStatus{SessionID: l.id, AgentID: l.agentID, Operator: l.operator, Since: l.createdAt.UTC(), ExpiresAt: l.expiresAt.UTC()})
			}
		}
		m.mu.Unlock()
	}
	st.Time = st.Time.UTC()
	for i := range st.Sessions {
		if m.AgentStale != nil {
			st.Sessions[i].AgentStale = m.AgentStale(st.Sessions[i].AgentID)
		} else {
			st.Sessions[i].AgentStale, _ = m.Fleet.Stale(st.Sessions[i].AgentID)
		}
	}
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

// unackedGrace is how long after its creation an unacknowledged session
// may still be an activation in progress on some node: the ack wait and
// a margin for the write that records the ack.
func (m *Manager) unackedGrace() time.Duration { return m.AckTimeout + 10*time.Second }

// LiveCount is how many sessions are live on this node.
func (m *Manager) LiveCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
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
		// Expired sessions, and sessions whose activation was never
		// acknowledged long after any node could still be waiting for it
		// (its node died mid-activation).
		rows, err := m.Pool.Query(ctx, `SELECT id, expires_at <= now() FROM support_sessions
			WHERE ended_at IS NULL AND (expires_at <= now() OR (acked_at IS NULL AND created_at < now() - $1::interval))`,
			m.unackedGrace().String())
		type due struct {
			id      string
			expired bool
		}
		var list []due
		if err == nil {
			list, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
				var d due
				err := r.Scan(&d.id, &d.expired)
				return d, err
			})
		}
		if err != nil {
			m.Log.Warn("session sweep", "err", err)
		}
		for _, d := range list {
			reason := EndExpired
			if !d.expired {
				reason = EndNoAck
			}
			if _, err := m.End(ctx, d.id, reason, audit.Entry{Actor: "system"}); err != nil && !errors.Is(err, ErrEnded) {
				m.Log.Error("end swept session", "session", d.id, "reason", reason, "err", err)
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
	agent := id.String()
	m.mu.Lock()
	w, waiting := m.acks[ack.SessionID]
	forged := waiting && w.agentID != agent
	if waiting && !forged {
		select {
		case w.acks <- ack:
		default:
		}
	}
	l := m.live[agent]
	m.mu.Unlock()
	if forged {
		// Session ids are visible on the status topics; an ack counts
		// only from the agent the session belongs to.
		m.refused(agent, pk.TopicName, "ack for another agent's session")
		return
	}
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
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
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
	w, ok := m.results[res.CommandID]
	m.mu.Unlock()
	if !ok {
		return
	}
	if w.agentID != id.String() || res.SessionID != w.sessionID {
		m.refused(id.String(), pk.TopicName, "result for a command sent to another agent or session")
		return
	}
	select {
	case w.results <- res:
	default:
	}
}

// refused reports an agent's message that claimed what is not its own.
func (m *Manager) refused(agentID, topic, why string) {
	m.Log.Warn("agent message refused", "agent", agentID, "topic", topic, "why", why)
	if m.Refused != nil {
		m.Refused(agentID, topic, why)
	}
}
