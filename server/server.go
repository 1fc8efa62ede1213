package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/broker/acl"
	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/api"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/auditstream"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/fleet"
	"github.com/argus-remote/argus/controlplane/mail"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/reconcile"
	"github.com/argus-remote/argus/controlplane/rowcache"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/statuspage"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/topics"
)

// Server is a running argus-server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	db       *Database
	broker   *broker.Broker
	policy   *acl.Policy
	fleet    *fleet.Watcher
	sessions *sessions.Manager
	commits  *audit.Committer
	keys     *signing.Distributor
	ring     *signing.Ring
	http     *http.Server
	httpLn   net.Listener
	scheme   string
	served   chan error

	tel       *telemetry.Telemetry
	closeOnce sync.Once
	// ready says Start completed: only a node that has served drains.
	ready       atomic.Bool
	closeErr    error
	stopNightly context.CancelFunc
	nightlyDone chan struct{}
	stopRows    context.CancelFunc
	rowsDone    chan struct{}

	// wire is set as the node joins, after the session manager's workers
	// (which broadcast what they end) have started.
	wire        atomic.Pointer[cluster.Wire]
	members     *cluster.Membership
	status      *cluster.StatusMirror
	control     agentControl
	stopMembers context.CancelFunc
	membersDone chan struct{}
	stopStream  context.CancelFunc
	streamDone  chan struct{}
	// draining is set while the node hands its agents over (drain.go).
	draining atomic.Bool
}

// Start opens the database, starts the broker and serves the API. It
// returns once everything listens; Close stops it all.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, served: make(chan error, 1), scheme: "http"}
	defer func() {
		if err != nil {
			s.Close(context.WithoutCancel(ctx))
		}
	}()

	if s.tel, err = telemetry.Setup(ctx, telemetry.Options{
		Service: "argus-server", Version: api.Version, OTLPEndpoint: cfg.OTLPEndpoint, Metrics: true, SpanProcessor: cfg.SpanProcessor,
	}); err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	if err := cfg.ResolveNodeID(); err != nil {
		return nil, err
	}
	s.cfg.NodeID = cfg.NodeID
	if s.db, err = OpenDatabase(ctx, cfg, log, true); err != nil {
		return nil, err
	}

	// The key set is the database's (shared by every node); the private
	// halves are files beside the configured key. A rotation made while
	// the server runs is picked up by the distributor's watch.
	keys, err := signing.OpenRing(ctx, s.db.Pool, cfg.CommandSigningKey, log)
	if err != nil {
		return nil, fmt.Errorf("command-signing-key: %w", err)
	}
	s.ring, s.keys = keys, signing.NewDistributor(keys, s.db.Pool, log)
	// Rows read on every request are cached while a listener hears of
	// their changes (rowcache); until it listens, they are read each time.
	rows := rowcache.NewListener(func(ctx context.Context) (*pgx.Conn, error) {
		return pgx.ConnectConfig(ctx, s.db.Pool.Config().ConnConfig.Copy())
	}, log)
	rctx, stopRows := context.WithCancel(context.WithoutCancel(ctx))
	s.stopRows, s.rowsDone = stopRows, make(chan struct{})
	go func() { defer close(s.rowsDone); rows.Run(rctx) }()

	agentStore := agents.NewStore(s.db.Pool)
	s.policy = acl.New(agentStore, log)
	tenantStore := tenants.NewStore(s.db.Pool)
	opStore := operators.NewStore(s.db.Pool)
	opStore.UseCache(rows)
	s.policy.Tokens = watcherTokens{ops: opStore, tenants: tenantStore}
	if err := s.policy.Warm(ctx, agentStore.LiveCredentials); err != nil {
		return nil, fmt.Errorf("loading agent credentials: %w", err)
	}
	s.fleet = fleet.New(agentStore, s.db.Pool, s.policy, cfg.NodeID, log)
	s.policy.OnDeny = s.fleet.OnDeny

	// The API listens first: its origin is one the broker lets browsers
	// (the status page) connect from.
	if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("http-addr: %w", err)
	}
	httpTLS, err := loadTLS(cfg.HTTPTLSCert, cfg.HTTPTLSKey)
	if err != nil {
		return nil, fmt.Errorf("http-tls-cert: %w", err)
	}
	if httpTLS != nil {
		s.scheme = "https"
	}
	origins := append([]string{s.APIURL()}, cfg.MQTTOrigins...)
	if host, port, err := net.SplitHostPort(s.httpLn.Addr().String()); err == nil && (host == "127.0.0.1" || host == "::1") {
		origins = append(origins, s.scheme+"://localhost:"+port)
	}

	mqttTLS, err := loadTLS(cfg.MQTTTLSCert, cfg.MQTTTLSKey)
	if err != nil {
		return nil, fmt.Errorf("mqtt-tls-cert: %w", err)
	}
	// Retained status is the same on every node: the mirror sees this
	// node's publishes (its hook) and applies the others' (cluster).
	s.status = cluster.NewStatusMirror(cfg.NodeID, nil, log.With("component", "cluster"))
	s.status.DropLive = cfg.Cluster.DropStatus
	s.status.ResyncEvery = cfg.Cluster.StatusResync
	pending := cfg.MQTTMaxPendingPerSource
	if pending == 0 {
		pending = -1 // the setting's 0 is no bound
	}
	s.broker, err = broker.New(broker.Config{
		WSAddr:              cfg.MQTTWSAddr,
		WSPath:              cfg.MQTTWSPath,
		TLS:                 mqttTLS,
		AllowedOrigins:      origins,
		MaxPacketSize:       cfg.MQTTMaxPacket,
		ConnectTimeout:      cfg.MQTTConnectTimeout,
		MaxPendingPerSource: pending,
		MaxClients:          cfg.MQTTMaxClients,
		Policy:              s.policy,
		Hooks:               []mqtt.Hook{s.fleet.Hook(), s.keys.Hook(), s.status.Hook()},
		Logger:              log,
	})
	if err != nil {
		return nil, err
	}
	s.status.SetPublisher(s.broker)
	s.commits = audit.NewCommitter(s.db.Pool)
	s.sessions = sessions.New(sessions.Options{
		Pool: s.db.Pool, Signer: keys.Signer, Broker: s.broker, ACL: s.policy, Fleet: s.fleet, Log: log,
		Disabled: !cfg.RemoteSupport, Commits: s.commits, Rows: rows,
		Refused: func(agentID, topic, why string) {
			s.policy.Refuse(acl.Denial{ClientID: agentID, AgentID: agentID, Topic: topic, Write: true, Why: why})
		},
		AfterCommit:    cfg.AfterActivationCommit,
		ReconnectWait:  cfg.CommandReconnectWait,
		CommandTimeout: cfg.CommandTimeout,
		Fenced:         s.Fenced,
		Unsigned:       s.ring.Usable,
		Ended:          s.broadcastEnded,
		AgentStale:     s.agentStale,
		Node:           cfg.NodeID,
		Cluster:        cfg.Cluster.Multi(),
		Route:          router{store: agentStore, wire: s.wire.Load, multi: cfg.Cluster.Multi(), node: cfg.NodeID},
	})
	s.control = agentControl{policy: s.policy, broker: s.broker, wire: s.wire.Load}
	s.ring.OnUsable(s.keysUsable)
	s.fleet.OnConnect = s.sessions.OnAgentConnected
	s.fleet.OnDisconnect = s.sessions.OnAgentDisconnected
	s.fleet.OnStale = s.sessions.OnAgentStale
	s.fleet.OnPresent = s.sessions.OnAgentPresent
	// The watcher and the sessions rebuild their state and subscribe before
	// the first agent can connect.
	if err := s.fleet.Start(ctx, s.broker.Server()); err != nil {
		return nil, err
	}
	if err := s.sessions.Start(ctx); err != nil {
		return nil, err
	}
	if err := s.keys.Start(ctx, s.broker); err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	// The node joins before its broker serves: an agent's connection is
	// recorded under a node the others know.
	if err := s.joinCluster(ctx); err != nil {
		return nil, err
	}
	if err := s.broker.Start(); err != nil {
		return nil, err
	}
	brokerURL := cfg.MQTTPublicURL
	if brokerURL == "" {
		brokerURL = s.broker.URL()
	}

	var sender *mail.Sender
	if cfg.SMTP.Enabled() {
		if sender, err = mail.New(cfg.SMTP, log); err != nil {
			return nil, err
		}
	}
	nightly := &reconcile.Nightly{
		Pool: s.db.Pool, Mail: sender, AllClear: cfg.ReconcileAllClear, At: cfg.ReconcileAt,
		Overlap: cfg.ReconcileOverlap, Node: cfg.NodeID, Log: log,
	}
	nctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopNightly, s.nightlyDone = stop, make(chan struct{})
	go func() {
		defer close(s.nightlyDone)
		go s.publishSummary(nctx)
		go s.watchMonitors(nctx, opStore)
		go s.watchViewers(nctx)
		nightly.Loop(nctx)
	}()

	// The audit goes to the SIEM as it commits; on a cluster, one node
	// at a time streams it (auditstream).
	if cfg.AuditStream.Addr != "" {
		streamer, err := auditstream.New(cfg.AuditStream, func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, s.db.Pool.Config().ConnConfig.Copy())
		}, sender, log)
		if err != nil {
			return nil, err
		}
		sctx, stopStream := context.WithCancel(context.WithoutCancel(ctx))
		s.stopStream, s.streamDone = stopStream, make(chan struct{})
		go func() { defer close(s.streamDone); streamer.Run(sctx) }()
	}

	apiSrv := &api.Server{
		Pool:         s.db.Pool,
		Operators:    opStore,
		Tenants:      tenantStore,
		Agents:       agentStore,
		AgentControl: s.control,
		Fenced:       s.Fenced,
		Draining:     s.draining.Load,
		Signing:      keys.Usable,
		AgentStale:   s.agentStale,
		Sessions:     s.sessions,
		Gate: api.Gate{
			Enabled: cfg.RemoteSupport, OperatorCIDRs: cfg.OperatorCIDRs,
			TrustedProxies: cfg.TrustedProxies, OpsToken: cfg.OpsToken,
		},
		BrokerURL:       brokerURL,
		BrowserMQTTURL:  brokerURL,
		EnrollPerMinute: cfg.EnrollPerMinute,
		Node:            cfg.NodeID,
		ClusterNodes: func(ctx context.Context) ([]cluster.Node, error) {
			// Every node is asked at once; a busy node's answer can take a
			// few hundred ms, and a false "unreachable" misleads whoever
			// is on call more than a slower answer does.
			return cluster.Status(ctx, s.db.Pool, s.wire.Load(), 2*time.Second)
		},
		// An agent enrolled here pins the key signed with at start; if it
		// has rotated since, the chain reaches the agent as it connects.
		SigningPublicKey: topics.EncodePublicKey(keys.Public()),
		SigningKey:       keys.Signer,
		Log:              log,
	}
	if err := s.observe(sender); err != nil {
		return nil, err
	}
	if cfg.PprofAddr != "" {
		pm := http.NewServeMux()
		pm.HandleFunc("/debug/pprof/", pprof.Index)
		pm.HandleFunc("/debug/pprof/profile", pprof.Profile)
		pm.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		// Measurements of resident memory (argus-bench) start from a
		// collected heap with its free memory returned to the system.
		pm.HandleFunc("POST /debug/free-os-memory", func(w http.ResponseWriter, _ *http.Request) {
			debug.FreeOSMemory()
			w.WriteHeader(http.StatusNoContent)
		})
		ps := &http.Server{Addr: cfg.PprofAddr, Handler: pm, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = ps.ListenAndServe() }()
		log.Warn("profiling endpoint on", "addr", cfg.PprofAddr)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.tel.MetricsHandler())
	mux.Handle("/status/", statuspage.Handler("/status/", brokerURL))
	mux.Handle("/", apiSrv.Handler())
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         httpTLS,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		var err error
		if httpTLS != nil {
			err = s.http.ServeTLS(s.httpLn, "", "")
		} else {
			err = s.http.Serve(s.httpLn)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.served <- err
	}()

	db := "configured database-url"
	if dir := s.db.ClusterDir(); dir != "" {
		db = "private cluster in " + dir
	}
	log.Info("api listening", "addr", s.httpLn.Addr().String(), "url", s.APIURL())
	log.Info("mqtt listening", "addr", s.broker.WSAddr().String(), "url", s.broker.URL())
	log.Info("argus-server ready", "api", s.APIURL(), "mqtt", s.broker.URL(), "database", db,
		"remote_support_enabled", cfg.RemoteSupport)
	s.ready.Store(true)
	return s, nil
}

// observe registers the gauges read from live state at scrape time.
func (s *Server) observe(sender *mail.Sender) error {
	m := otel.Meter("argus/server")
	agentsGauge, err := m.Int64ObservableGauge("argus_agents_connected", metric.WithDescription("Agents connected to this node."))
	if err != nil {
		return err
	}
	sessionsGauge, err := m.Int64ObservableGauge("argus_sessions_live", metric.WithDescription("Live support sessions on this node."))
	if err != nil {
		return err
	}
	denials, err := m.Int64ObservableCounter("argus_acl_denials", metric.WithDescription("Broker accesses refused by the ACL."))
	if err != nil {
		return err
	}
	mailFailures, err := m.Int64ObservableCounter("argus_mail_failures", metric.WithDescription("Failed attempts to send audit mail."))
	if err != nil {
		return err
	}
	awaiting, err := m.Int64ObservableGauge("argus_commands_awaiting_agent",
		metric.WithDescription("Commands waiting for their reconnecting agent to be back and subscribed."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(agentsGauge, int64(s.fleet.OnlineCount()))
		o.ObserveInt64(sessionsGauge, int64(s.sessions.LiveCount()))
		o.ObserveInt64(denials, s.policy.Denials())
		o.ObserveInt64(awaiting, int64(s.sessions.AwaitingAgents()))
		if sender != nil {
			o.ObserveInt64(mailFailures, sender.Failures())
		} else {
			o.ObserveInt64(mailFailures, 0)
		}
		return nil
	}, agentsGauge, sessionsGauge, denials, mailFailures, awaiting)
	return err
}

// ServerStatus is the retained summary of one server node.
type ServerStatus struct {
	V             int       `json:"v"`
	NodeID        string    `json:"node_id"`
	Version       string    `json:"version"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	AgentsOnline  int       `json:"agents_online"`
	LiveSessions  int       `json:"live_sessions"`
	Time          time.Time `json:"time"`
	// Nodes is the whole cluster as the database has it, with the agents
	// each node holds (this node among them); ClusterAgents is their sum.
	Nodes         []cluster.Node `json:"nodes"`
	ClusterAgents int            `json:"cluster_agents_online"`
}

// publishSummary keeps the retained server summary fresh for monitors.
func (s *Server) publishSummary(ctx context.Context) {
	started := time.Now()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		st := ServerStatus{V: topics.Version, NodeID: s.cfg.NodeID, Version: api.Version, UptimeSeconds: int64(time.Since(started).Seconds()),
			AgentsOnline: s.fleet.OnlineCount(), LiveSessions: s.sessions.LiveCount(), Time: time.Now().UTC()}
		st.Nodes, st.ClusterAgents = s.clusterNodes(ctx)
		b, _ := json.Marshal(st)
		if err := s.broker.Publish(topics.ServerStatus, b, true, 0, nil); err != nil {
			s.log.Warn("publish server status", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Broker returns the embedded broker.
func (s *Server) Broker() *broker.Broker { return s.broker }

// Sessions returns the session manager.
func (s *Server) Sessions() *sessions.Manager { return s.sessions }

// SigningKeys returns the live key set: the key to sign with now (and its
// KeyID, for signatures that name their key).
func (s *Server) SigningKeys() *signing.Ring { return s.ring }

// Policy returns the broker's access policy.
func (s *Server) Policy() *acl.Policy { return s.policy }

// watcherTokens checks monitor and viewer credentials for the broker.
type watcherTokens struct {
	ops     *operators.Store
	tenants *tenants.Store
}

func (w watcherTokens) Monitor(ctx context.Context, token string) (acl.MonitorGrant, bool) {
	p, err := w.ops.Authenticate(ctx, token)
	if err != nil || !p.Has(operators.ScopeMonitor) {
		return acl.MonitorGrant{}, false
	}
	return acl.MonitorGrant{TokenID: p.TokenID, OperatorID: p.OperatorID, ExpiresAt: p.ExpiresAt}, true
}

func (w watcherTokens) Viewer(ctx context.Context, token string) (acl.ViewerGrant, bool) {
	g, err := w.tenants.AuthenticateToken(ctx, token)
	return acl.ViewerGrant{TokenID: g.TokenID, TenantID: g.TenantID}, err == nil
}

// agentControl applies revocations: on this node's broker at once, and
// on the others' through a broadcast (their sweeps catch a lost one).
type agentControl struct {
	policy *acl.Policy
	broker *broker.Broker
	wire   func() *cluster.Wire
}

func (c agentControl) DisconnectViewerTokens(tokenIDs ...string) {
	c.disconnectViewerTokensHere(tokenIDs...)
	c.wire().Broadcast(cluster.Change{Kind: cluster.ViewerTokensRevoked, TokenIDs: tokenIDs})
}

func (c agentControl) disconnectViewerTokensHere(tokenIDs ...string) {
	for _, id := range c.policy.ViewersWith(tokenIDs...) {
		c.broker.Disconnect(id, packets.ErrNotAuthorized)
	}
}

func (c agentControl) DisconnectMonitorTokens(tokenIDs ...string) {
	c.disconnectMonitorsHere(tokenIDs...)
	c.wire().Broadcast(cluster.Change{Kind: cluster.MonitorTokensRevoked, TokenIDs: tokenIDs})
}

func (c agentControl) disconnectMonitorsHere(tokenIDs ...string) {
	for _, id := range c.policy.MonitorsWith(tokenIDs...) {
		c.broker.Disconnect(id, packets.ErrNotAuthorized)
	}
}

// monitorCheck is how often the monitor connections are checked against
// their tokens.
const monitorCheck = 250 * time.Millisecond

// watchMonitors ends every monitor connection whose token has expired,
// been revoked or lost its operator, however that happened (this server's
// API ends its own revocations' connections at once; another server or
// SQL by hand is seen here, through the token cache that LISTEN/NOTIFY
// keeps fresh).
func (s *Server) watchMonitors(ctx context.Context, ops *operators.Store) {
	t := time.NewTicker(monitorCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// The grants are few (one per monitor connection), so this reads
		// no more than they are, however many agents are connected.
		now := time.Now()
		for id, g := range s.policy.Monitors() {
			if !s.broker.Connected(id) {
				continue
			}
			why := ""
			if g.Expired(now) {
				why = "token expired"
			} else {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				live, err := ops.TokenLive(cctx, g.TokenID)
				cancel()
				if err != nil {
					// A read-only connection is kept through a database
					// hiccup; the next check asks again.
					s.log.Debug("monitor token check", "client", id, "err", err)
					continue
				}
				if !live {
					why = "token revoked or operator disabled"
				}
			}
			if why != "" && s.broker.Disconnect(id, packets.ErrNotAuthorized) {
				s.log.Info("monitor disconnected", "client", id, "token_id", g.TokenID, "why", why)
			}
		}
		s.policy.PruneMonitors(s.broker.Connected)
	}
}

func (c agentControl) RevokeAgent(agentID string) {
	c.revokeHere(agentID)
	c.wire().Broadcast(cluster.Change{Kind: cluster.AgentRevoked, AgentID: agentID})
}

func (c agentControl) revokeHere(agentID string) {
	c.policy.Revoke(agentID)
	c.broker.Disconnect(agentID, packets.ErrNotAuthorized)
}

// APIURL is the base URL of the HTTP API on its bound address.
func (s *Server) APIURL() string { return s.scheme + "://" + s.httpLn.Addr().String() }

// MQTTURL is the broker's WebSocket URL on its bound address.
func (s *Server) MQTTURL() string { return s.broker.URL() }

// Database returns the server's database.
func (s *Server) Database() *Database { return s.db }

// Wait blocks until ctx is done or the HTTP server fails.
func (s *Server) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.served:
		return fmt.Errorf("http server: %w", err)
	}
}

// Close stops the API, the broker and the database, in that order, so no
// request or client outlives the store behind it.
//
// A node of a cluster drains first (drain.go): its agents move to the
// other nodes with their sessions, once the commands in flight here are
// done.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.drain(ctx)
		s.closeErr = s.close(ctx)
	})
	return s.closeErr
}

func (s *Server) close(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	if s.stopNightly != nil {
		s.stopNightly()
		<-s.nightlyDone
	}
	if s.http != nil {
		if err := s.http.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	} else if s.httpLn != nil {
		_ = s.httpLn.Close()
	}
	if s.sessions != nil && s.broker != nil {
		s.sessions.FlushFeeds() // the last commands' feed, while the broker still carries it
	}
	if s.broker != nil {
		if err := s.broker.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.keys != nil && s.broker != nil {
		s.keys.Stop()
	}
	if s.stopMembers != nil {
		s.stopMembers()
		<-s.membersDone
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := s.members.Leave(lctx); err != nil {
			s.log.Warn("cluster: leave", "err", err)
		}
		cancel()
	}
	if s.sessions != nil && s.broker != nil {
		s.sessions.Stop()
	}
	if s.fleet != nil && s.broker != nil {
		s.fleet.Stop()
	}
	if w := s.wire.Load(); w != nil {
		w.Close()
	}
	if s.commits != nil {
		s.commits.Close()
	}
	if s.stopStream != nil {
		s.stopStream()
		<-s.streamDone
	}
	if s.stopRows != nil {
		s.stopRows()
		<-s.rowsDone
	}
	if s.db != nil {
		if err := s.db.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.tel.Shutdown(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		s.log.Info("argus-server stopped")
	}
	return errors.Join(errs...)
}
