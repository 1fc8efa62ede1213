package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/argus-remote/argus/internal/wsnet"
)

// wsListener serves MQTT over WebSocket on one path of its own HTTP server.
// mochi's stock listener serves every path and accepts every Origin; this
// one binds at Init (so a bad address fails start-up and port 0 works),
// serves one path, and admits browsers only from allowed origins.
type wsListener struct {
	id      string
	address string
	path    string
	tls     *tls.Config
	origins []string

	upgrader       websocket.Upgrader
	readMax        int64
	connectTimeout time.Duration
	pending        *pendingSet

	mu        sync.Mutex
	ln        net.Listener
	srv       *http.Server
	log       *slog.Logger
	establish listeners.EstablishFn
}

func newWSListener(id string, cfg Config) *wsListener {
	l := &wsListener{
		id: id, address: cfg.WSAddr, path: cfg.WSPath, tls: cfg.TLS, origins: cfg.AllowedOrigins,
		readMax:        int64(cfg.MaxPacketSize) + 16,
		connectTimeout: cfg.ConnectTimeout,
		pending:        newPendingSet(cfg.MaxPendingPerSource),
	}
	l.upgrader = websocket.Upgrader{
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: cfg.ConnectTimeout,
		CheckOrigin:      l.checkOrigin,
		// gorilla's connection is dropped after the handshake; these keep
		// what it allocates for it small.
		ReadBufferSize:  256,
		WriteBufferPool: &sync.Pool{},
	}
	return l
}

func (l *wsListener) ID() string { return l.id }

func (l *wsListener) Address() string {
	if a := l.addr(); a != nil {
		return a.String()
	}
	return l.address
}

func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

func (l *wsListener) Init(log *slog.Logger) error {
	// No TCP keep-alive: the MQTT keep-alive finds a dead client (mochi
	// waits 1.5 of them). Probes on every idle socket are a second check
	// whose timers fire in batches; on loopback, 100,000 sockets' batches
	// overflow the receive queue, and the dropped probes end healthy
	// connections with ETIMEDOUT.
	lc := net.ListenConfig{KeepAlive: -1}
	tcp, err := lc.Listen(context.Background(), "tcp", l.address)
	if err != nil {
		return err
	}
	var ln net.Listener = &pendingListener{Listener: tcp, pending: l.pending, log: log}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(l.path, l.handle)
	l.mu.Lock()
	l.ln = ln
	l.log = log
	// Nothing is served here but the upgrade to MQTT: a connection has the
	// connect timeout for its TLS handshake, its request, or between
	// requests, as it has from accept to CONNECT.
	l.srv = &http.Server{
		Handler: mux, ReadHeaderTimeout: l.connectTimeout, IdleTimeout: l.connectTimeout,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	l.mu.Unlock()
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.establish = establish
	srv, ln := l.srv, l.ln
	l.mu.Unlock()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error("websocket listener stopped", "err", err)
	}
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	srv := l.srv
	l.mu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
	// mochi waits for every connection it was handed, those still to send
	// a CONNECT too, which only their deadline would end.
	l.pending.closeAll()
	closeClients(l.id)
}

func (l *wsListener) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	return origin == "" || slices.Contains(l.origins, origin)
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != l.path {
		http.NotFound(w, r)
		return
	}
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered the request.
	}
	l.mu.Lock()
	establish := l.establish
	l.mu.Unlock()
	remote := r.RemoteAddr
	netConn := c.NetConn()
	pc := pendingOf(netConn)
	if pc == nil {
		_ = netConn.Close() // not one pendingListener accepted: cannot be
		return
	}
	// net/http cleared the connection's deadlines as gorilla took it over,
	// and mochi sets its keep-alive deadline only once it has read the
	// CONNECT: until then, the connect timeout counted from accept holds.
	_ = netConn.SetDeadline(pc.accepted.Add(l.connectTimeout))
	if netConn == net.Conn(pc) {
		// Plain TCP: wsnet gets the socket itself, which it can peek at;
		// the slot is given back below.
		netConn = pc.Conn
	}
	// gorilla only did the handshake (it refuses clients that send before
	// it ends, so nothing is buffered); wsnet frames the stream itself so an
	// idle connection holds no read buffer and can be waited on without
	// reading (mochi's ReadWaiter). The broker owns the connection from here
	// and closes it when the client ends. The MQTT loop runs on a fresh
	// goroutine and the handler returns, so net/http's goroutine, its deep
	// stack and its buffers are freed.
	conn := wsnet.NewServerConn(netConn, l.readMax)
	go func() {
		// On a ReadWaiter, establish returns once the CONNECT is answered:
		// the connection is no longer pending either way.
		defer pc.settle()
		if err := establish(l.id, conn); err != nil {
			l.log.Debug("client connection refused", "remote", remote, "err", err)
		}
	}()
}

// pendingSet holds the connections not yet answered their CONNECT, and
// counts them per source.
type pendingSet struct {
	max int // per source; < 0: no bound
	// full, when set, is whether the broker has no room for one more
	// connection beside those pending.
	full   func(pending int) bool
	mu     sync.Mutex
	n      map[netip.Addr]int
	conns  map[*pendingConn]struct{}
	closed bool
}

func newPendingSet(bound int) *pendingSet {
	return &pendingSet{max: bound, n: map[netip.Addr]int{}, conns: map[*pendingConn]struct{}{}}
}

// add takes a slot of c's source for c, unless the source holds max
// already, the broker is full or the set is closed.
func (s *pendingSet) add(c *pendingConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (s.max >= 0 && s.n[c.src] >= s.max) || (s.full != nil && s.full(len(s.conns))) {
		return false
	}
	s.n[c.src]++
	s.conns[c] = struct{}{}
	return true
}

func (s *pendingSet) remove(c *pendingConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.n[c.src]--; s.n[c.src] <= 0 {
		delete(s.n, c.src)
	}
}

// closeAll closes every pending connection, so that a broker closing does
// not wait for them, and refuses any more.
func (s *pendingSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		_ = c.Conn.Close() // the socket: c itself may no longer be the one in use
	}
}

// sourceOf is the source a connection is counted against: its IPv4
// address, or its IPv6 address's /64, which one host can hold whole.
func sourceOf(a net.Addr) netip.Addr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// pendingListener accepts a connection only while its source has fewer
// than the limiter's bound pending; it closes one more at once, before
// net/http spends a goroutine or a buffer on it.
type pendingListener struct {
	net.Listener
	pending *pendingSet
	log     *slog.Logger
}

func (l *pendingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pc := &pendingConn{Conn: c, pending: l.pending, src: sourceOf(c.RemoteAddr()), accepted: time.Now()}
		if l.pending.add(pc) {
			return pc, nil
		}
		l.log.Debug("connection refused: too many pending from its source, or the broker is full", "remote", c.RemoteAddr().String())
		_ = c.Close()
	}
}

// pendingConn is a connection until its CONNECT is answered: it holds a
// slot of its source's, given back once (settle) when the CONNECT is
// answered or the connection closed.
type pendingConn struct {
	net.Conn
	pending  *pendingSet
	src      netip.Addr
	accepted time.Time
	settled  atomic.Bool
}

func (c *pendingConn) settle() {
	if c.settled.CompareAndSwap(false, true) {
		c.pending.remove(c)
	}
}

func (c *pendingConn) Close() error {
	c.settle()
	return c.Conn.Close()
}

// CloseWrite lets net/http half-close after an error response, as it does
// a *net.TCPConn.
func (c *pendingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// pendingOf finds the pendingConn under a connection net/http served.
func pendingOf(c net.Conn) *pendingConn {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	pc, _ := c.(*pendingConn)
	return pc
}
