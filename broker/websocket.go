package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
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

	upgrader websocket.Upgrader
	readMax  int64

	mu        sync.Mutex
	ln        net.Listener
	srv       *http.Server
	log       *slog.Logger
	establish listeners.EstablishFn
}

func newWSListener(id, address, path string, tlsConf *tls.Config, origins []string, maxPacket int64) *wsListener {
	l := &wsListener{id: id, address: address, path: path, tls: tlsConf, origins: origins, readMax: maxPacket + 16}
	l.upgrader = websocket.Upgrader{
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: 10 * time.Second,
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
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(l.path, l.handle)
	l.mu.Lock()
	l.ln = ln
	l.log = log
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
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
	// gorilla only did the handshake (it refuses clients that send before
	// it ends, so nothing is buffered); wsnet frames the stream itself so an
	// idle connection holds no read buffer and can be waited on without
	// reading (mochi's ReadWaiter). The broker owns the connection from here
	// and closes it when the client ends. The MQTT loop runs on a fresh
	// goroutine and the handler returns, so net/http's goroutine, its deep
	// stack and its buffers are freed.
	conn := wsnet.NewServerConn(c.NetConn(), l.readMax)
	go func() {
		if err := establish(l.id, conn); err != nil {
			l.log.Debug("client connection refused", "remote", remote, "err", err)
		}
	}()
}
