// Package auditstream sends every events row, in sequence order, to a
// syslog receiver (a SIEM) as it commits: RFC 5424 messages with the
// event in structured data, over TCP with octet-counting framing (RFC
// 6587 §3.4.1), TLS when configured.
//
// Delivery is at least once and in order. The last seq the receiver
// accepted is kept in PostgreSQL (audit_stream_positions); a restart, a
// receiver outage or another node taking over resends from there, so a
// receiver sees duplicates (it drops them by seq) and never a gap. TCP
// has no application acknowledgement, so a seq counts as accepted once
// (1) every byte of it has been acknowledged by the receiver's TCP (the
// socket's send queue has drained past it: SIOCOUTQ), and (2) the
// connection was still open Settle later. (1) keeps bytes stuck in this
// host's buffers, or lost on the way, from counting; (2) catches a
// receiver that closed or died with them unread, since its kernel then
// resets or closes the connection and the reader here sees it. What the
// receiver does with bytes it has read is its own affair (a receiver
// that must not lose them once read queues them to disk).
//
// Exactly one process streams at a time: the one holding a PostgreSQL
// session advisory lock on its own dedicated connection. That connection
// also LISTENs for new events (migration 0009) and writes the position,
// so a node that has lost it can neither hear, nor record, nor hold the
// lock; another node's wait for the lock ends when it is gone.
//
// It never writes to the events chain and never blocks a writer of it.
package auditstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/argus-remote/argus/controlplane/mail"
	"github.com/argus-remote/argus/internal/telemetry"
)

// Channel is where inserts into events are announced.
const Channel = "argus_events"

// lockKey is the advisory lock the streaming node holds ("argusstr").
const lockKey int64 = 0x6172677573737472

// Config is where and how to stream.
type Config struct {
	// Addr is the receiver's host:port.
	Addr string
	// TLS wraps the connection in TLS, verifying the receiver against
	// the system's roots and CAFile's certificates.
	TLS    bool
	CAFile string
	// MaxLag is the age of the oldest unaccepted event past which the gap
	// is alarmed (metric, log line, mail).
	MaxLag time.Duration
	// MaxMessage bounds one message, frame excluded (see format).
	MaxMessage int
	// Hostname is every message's HOSTNAME: the node id.
	Hostname string

	// Poll is the backstop for a lost notification (5 s); Settle is how
	// long a connection must stay open after its bytes were acknowledged
	// (1 s); Batch is how many events are read and written at once (500).
	Poll   time.Duration
	Settle time.Duration
	Batch  int
}

// Streamer streams the audit while it holds the lock.
type Streamer struct {
	cfg     Config
	connect func(context.Context) (*pgx.Conn, error)
	mail    *mail.Sender
	log     *slog.Logger
	tls     *tls.Config

	streaming atomic.Bool
	accepted  atomic.Int64 // the receiver's position
	sent      atomic.Int64 // the last seq written to the receiver
	lagMicros atomic.Int64 // age of the oldest unaccepted event
	alarmed   bool         // the current gap has been alarmed; the stream loop's own
}

var gapsCounter = telemetry.NewInstrument("argus/auditstream", func(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("argus_audit_stream_gaps",
		metric.WithDescription("Times events older than audit-stream-max-lag were still not accepted by the receiver."))
})

var sentCounter = telemetry.NewInstrument("argus/auditstream", func(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("argus_audit_stream_sent",
		metric.WithDescription("Audit events written to the syslog receiver, resends included."))
})

// New returns a Streamer that opens its dedicated database connection
// with connect and mails gaps through sender (nil: no mail). Run starts it.
func New(cfg Config, connect func(context.Context) (*pgx.Conn, error), sender *mail.Sender, log *slog.Logger) (*Streamer, error) {
	if cfg.Poll <= 0 {
		cfg.Poll = 5 * time.Second
	}
	if cfg.Settle <= 0 {
		cfg.Settle = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.MaxMessage < MinMessage {
		cfg.MaxMessage = MinMessage
	}
	s := &Streamer{cfg: cfg, connect: connect, mail: sender, log: log.With("receiver", cfg.Addr)}
	if cfg.TLS {
		host, _, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("audit-stream-addr: %w", err)
		}
		s.tls = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("audit-stream-ca-file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("audit-stream-ca-file %s: no PEM certificate", cfg.CAFile)
			}
			s.tls.RootCAs = pool
		}
	}
	return s, s.observe()
}

// Streaming reports whether this process holds the lock and streams.
func (s *Streamer) Streaming() bool { return s.streaming.Load() }

// Accepted is the last seq the receiver accepted, as this process knows it.
func (s *Streamer) Accepted() int64 { return s.accepted.Load() }

func (s *Streamer) observe() error {
	m := otel.Meter("argus/auditstream")
	last, err := m.Int64ObservableGauge("argus_audit_stream_last_seq",
		metric.WithDescription("Last events seq the syslog receiver accepted (reported by the streaming node)."))
	if err != nil {
		return err
	}
	lag, err := m.Float64ObservableGauge("argus_audit_stream_lag_seconds",
		metric.WithDescription("Age of the oldest event the syslog receiver has not accepted; 0 when none (reported by the streaming node)."))
	if err != nil {
		return err
	}
	sent, err := m.Int64ObservableGauge("argus_audit_stream_sent_seq",
		metric.WithDescription("Last events seq written to the syslog receiver, accepted or not yet (reported by the streaming node)."))
	if err != nil {
		return err
	}
	streaming, err := m.Int64ObservableGauge("argus_audit_stream_streaming",
		metric.WithDescription("1 on the node that holds the stream's lock and streams the audit, 0 elsewhere."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if !s.streaming.Load() {
			o.ObserveInt64(streaming, 0)
			return nil
		}
		o.ObserveInt64(streaming, 1)
		o.ObserveInt64(last, s.accepted.Load())
		o.ObserveInt64(sent, s.sent.Load())
		o.ObserveFloat64(lag, float64(s.lagMicros.Load())/1e6)
		return nil
	}, last, sent, lag, streaming)
	return err
}

// Run streams whenever it holds the lock, until ctx ends: it waits for
// the lock, streams until its database connection fails, and waits again.
func (s *Streamer) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.hold(ctx)
		if s.streaming.Swap(false) {
			backoff = 100 * time.Millisecond // it held the lock: a fresh failure
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("audit stream: database connection lost; waiting for the lock again", "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// hold takes the lock on a connection of its own and streams while it has
// it. A node that dies takes its connection, and so the lock, with it;
// the keepalives make the database notice a node that vanished without
// closing its connection within about half a minute.
func (s *Streamer) hold(ctx context.Context) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3`); err != nil {
		return fmt.Errorf("keepalives: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO audit_stream_positions (receiver, node) VALUES ($1, $2)
		ON CONFLICT (receiver) DO NOTHING`, s.cfg.Addr, s.cfg.Hostname); err != nil {
		return fmt.Errorf("position: %w", err)
	}
	var pos int64
	if err := conn.QueryRow(ctx, "SELECT seq FROM audit_stream_positions WHERE receiver = $1", s.cfg.Addr).Scan(&pos); err != nil {
		return fmt.Errorf("position: %w", err)
	}
	s.accepted.Store(pos)
	s.sent.Store(pos)
	s.streaming.Store(true)
	s.log.Info("audit stream: this node streams", "from_seq", pos+1)
	st := &stream{s: s, db: conn, accepted: pos, sent: pos, wake: true}
	return st.run(ctx)
}

// stream is one holding of the lock: its connection, the receiver
// connection when there is one, and what has been sent on it.
type stream struct {
	s  *Streamer
	db *pgx.Conn

	rc       *receiver
	accepted int64 // stored position
	sent     int64 // last seq written on rc (accepted when rc is nil)
	pending  []batch
	wake     bool      // a notification (or the start) asks for a read
	stuck    bool      // the next event cannot be sent (see send)
	lastRead time.Time // of events
	lagAt    time.Time // of the last lag check
	dialAt   time.Time // earliest next dial
	backoff  time.Duration
}

// batch is events written together: they are accepted together.
type batch struct {
	last   int64     // seq
	end    int64     // bytes written to the socket up to its end
	oldest time.Time // its first event's occurred_at
	acked  time.Time // when the socket was seen to have drained past end
}

// tick bounds a wait while something is in flight: acknowledgements
// are looked for and the position moved this often.
const tick = 100 * time.Millisecond

func (st *stream) run(ctx context.Context) error {
	defer st.closeReceiver("stopped")
	for {
		if err := st.step(ctx); err != nil {
			return err
		}
		wait := st.s.cfg.Poll - time.Since(st.lastRead)
		if st.rc == nil || len(st.pending) > 0 || st.lag() > 0 {
			wait = min(wait, tick)
		}
		if wait < time.Millisecond {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		_, err := st.db.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			st.wake = true
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) && !st.db.IsClosed():
			// The wait's own deadline: the connection is still good.
		default:
			return fmt.Errorf("wait: %w", err)
		}
	}
}

// step does whatever is due: notice a dead receiver, dial, send what is
// new, move the position over what was accepted, check the lag.
func (st *stream) step(ctx context.Context) error {
	if st.rc != nil && st.rc.isDead() {
		st.closeReceiver("receiver closed the connection")
	}
	if st.rc == nil && time.Now().After(st.dialAt) {
		st.dial(ctx)
	}
	if st.rc != nil && (st.wake || time.Since(st.lastRead) >= st.s.cfg.Poll) {
		if err := st.send(ctx); err != nil {
			return err
		}
	}
	if err := st.confirm(ctx); err != nil {
		return err
	}
	return st.checkLag(ctx)
}

func (st *stream) dial(ctx context.Context) {
	rc, err := dialReceiver(ctx, st.s.cfg.Addr, st.s.tls)
	if err != nil {
		st.backoff = min(max(2*st.backoff, 100*time.Millisecond), 5*time.Second)
		st.dialAt = time.Now().Add(st.backoff)
		st.s.log.Warn("audit stream: receiver unreachable", "err", err, "retry_in", st.backoff)
		return
	}
	st.backoff = 0
	st.rc, st.sent, st.wake = rc, st.accepted, true
	st.s.log.Info("audit stream: connected to the receiver", "resend_from_seq", st.accepted+1)
}

// closeReceiver drops the receiver connection: whatever it had not
// accepted is sent again, on the next one, from the stored position.
func (st *stream) closeReceiver(why string) {
	if st.rc == nil {
		return
	}
	st.rc.close()
	if st.sent > st.accepted {
		st.s.log.Warn("audit stream: receiver connection lost; resending what it had not accepted", "why", why,
			"accepted_seq", st.accepted, "sent_seq", st.sent)
	}
	st.rc, st.pending, st.sent = nil, nil, st.accepted
}

// send writes every committed event after the last one sent, a batch at
// a time, until none is left or the receiver fails.
func (st *stream) send(ctx context.Context) error {
	st.wake = false
	for {
		st.lastRead = time.Now()
		rows, err := st.db.Query(ctx, `SELECT seq, hash, occurred_at, coalesce(canonical, convert_to(payload::text, 'UTF8'))
			FROM events WHERE seq > $1 ORDER BY seq LIMIT $2`, st.sent, st.s.cfg.Batch)
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (event, error) {
			var e event
			return e, r.Scan(&e.Seq, &e.Hash, &e.OccurredAt, &e.Canonical)
		})
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		if len(evs) == 0 {
			return nil
		}
		if err := st.write(evs); errors.Is(err, errFormat) {
			// Never skipped, since a gap at the receiver would hide it:
			// tried again at the next poll, and alarmed as a gap.
			st.s.log.Error("audit stream: an event cannot be sent", "err", err)
			st.stuck = true
			return nil
		} else if err != nil {
			st.closeReceiver(err.Error())
			st.dialAt = time.Now()
			return nil
		}
		if len(evs) < st.s.cfg.Batch {
			return nil
		}
	}
}

// errFormat is an event that cannot be made a message.
var errFormat = errors.New("format")

func (st *stream) write(evs []event) error {
	var buf []byte
	var ferr error
	n := 0
	for _, e := range evs {
		msg, err := format(e, st.s.cfg.Hostname, os.Getpid(), st.s.cfg.MaxMessage)
		if err != nil {
			// What comes before it is sent; nothing after it.
			ferr = fmt.Errorf("%w: %w", errFormat, err)
			break
		}
		buf = frame(buf, msg)
		n++
	}
	if n == 0 {
		return ferr
	}
	end, err := st.rc.write(buf)
	if err != nil {
		return err
	}
	st.stuck = false
	st.pending = append(st.pending, batch{last: evs[n-1].Seq, end: end, oldest: evs[0].OccurredAt})
	st.sent = evs[n-1].Seq
	st.s.sent.Store(st.sent)
	sentCounter.Get().Add(context.Background(), int64(n))
	return ferr
}

// confirm marks the batches the receiver's TCP has acknowledged, and
// stores the position past those acknowledged at least Settle ago on a
// connection still open.
func (st *stream) confirm(ctx context.Context) error {
	if st.rc == nil || len(st.pending) == 0 {
		return nil
	}
	acked, err := st.rc.acked()
	if err != nil {
		st.closeReceiver(err.Error())
		return nil
	}
	now := time.Now()
	n := 0
	for i := range st.pending {
		b := &st.pending[i]
		if b.end > acked {
			break
		}
		if b.acked.IsZero() {
			b.acked = now
		}
		if now.Sub(b.acked) >= st.s.cfg.Settle {
			n = i + 1
		}
	}
	if n == 0 {
		return nil
	}
	// The reader is the witness: a connection that ended meanwhile accepts nothing.
	if st.rc.isDead() {
		st.closeReceiver("receiver closed the connection")
		return nil
	}
	seq := st.pending[n-1].last
	if _, err := st.db.Exec(ctx, `UPDATE audit_stream_positions SET seq = $2, node = $3, updated_at = now()
		WHERE receiver = $1 AND seq < $2`, st.s.cfg.Addr, seq, st.s.cfg.Hostname); err != nil {
		return fmt.Errorf("store position: %w", err)
	}
	st.pending = st.pending[n:]
	st.accepted = seq
	st.s.accepted.Store(seq)
	return nil
}

// lag is the age of the oldest unaccepted event, as last measured.
func (st *stream) lag() time.Duration { return time.Duration(st.s.lagMicros.Load()) * time.Microsecond }

// checkLag measures the lag (at most once per tick) and alarms a gap
// once when it passes MaxLag, and says so when it has closed.
func (st *stream) checkLag(ctx context.Context) error {
	now := time.Now()
	var oldest time.Time
	if len(st.pending) > 0 {
		oldest = st.pending[0].oldest
	} else if st.rc == nil || st.wake || st.stuck {
		// Nothing in flight, and perhaps unsent events: the database
		// says, asked once a second.
		if now.Sub(st.lagAt) < time.Second {
			return nil
		}
		st.lagAt = now
		err := st.db.QueryRow(ctx, "SELECT occurred_at FROM events WHERE seq > $1 ORDER BY seq LIMIT 1", st.accepted).Scan(&oldest)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("lag: %w", err)
		}
	}
	lag := time.Duration(0)
	if !oldest.IsZero() {
		lag = max(now.Sub(oldest), 0)
	}
	st.s.lagMicros.Store(lag.Microseconds())
	s := st.s
	switch {
	case lag > s.cfg.MaxLag && !s.alarmed:
		s.alarmed = true
		gapsCounter.Get().Add(ctx, 1)
		var head int64
		_ = st.db.QueryRow(ctx, "SELECT coalesce(max(seq), 0) FROM events").Scan(&head)
		s.log.Error("audit stream gap: events older than audit-stream-max-lag are not at the receiver",
			"lag", lag.Round(time.Millisecond), "max_lag", s.cfg.MaxLag, "accepted_seq", st.accepted, "head_seq", head,
			"receiver_connected", st.rc != nil)
		s.mailGap(lag, st.accepted, head, st.rc != nil)
	case lag <= s.cfg.MaxLag && s.alarmed:
		s.alarmed = false
		s.log.Info("audit stream gap closed", "lag", lag.Round(time.Millisecond), "accepted_seq", st.accepted)
	}
	return nil
}

// mailGap sends the gap notice to the audit's mail recipients, in the
// background: the stream does not wait on an SMTP relay.
func (s *Streamer) mailGap(lag time.Duration, accepted, head int64, connected bool) {
	if s.mail == nil {
		return
	}
	subject := fmt.Sprintf("ARGUS audit stream: %d events not at the SIEM after %s", head-accepted, lag.Round(time.Second))
	state := "unreachable"
	if connected {
		state = "connected but not acknowledging"
	}
	body := fmt.Sprintf("The audit stream to %s has fallen behind.\n\n"+
		"Receiver: %s (%s)\nNode streaming: %s\nLast seq accepted: %d\nNewest seq: %d\nOldest unaccepted event: %s old (alarm at %s)\n\n"+
		"Nothing is lost: the events are in PostgreSQL and are sent from seq %d as soon as the receiver accepts them.\n",
		s.cfg.Addr, s.cfg.Addr, state, s.cfg.Hostname, accepted, head, lag.Round(time.Second), s.cfg.MaxLag, accepted+1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		if err := s.mail.Send(ctx, subject, body, 5, time.Minute); err != nil {
			s.log.Error("audit stream gap mail", "err", err)
		}
	}()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// receiver is one connection to the syslog receiver.
type receiver struct {
	conn    net.Conn     // what is written to: the TLS connection, or tcp
	tcp     *net.TCPConn // the socket, for its send queue
	counted *countingConn
	w       *bufio.Writer
	dead    chan struct{}
}

// writeTimeout bounds one write: a receiver that stops reading for this
// long is dropped and dialled again.
const writeTimeout = 10 * time.Second

func dialReceiver(ctx context.Context, addr string, cfg *tls.Config) (*receiver, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &receiver{tcp: c.(*net.TCPConn), counted: &countingConn{Conn: c}, dead: make(chan struct{})}
	r.conn = r.counted
	if cfg != nil {
		tc := tls.Client(r.counted, cfg)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("tls: %w", err)
		}
		r.conn = tc
	}
	r.w = bufio.NewWriterSize(r.conn, 64<<10)
	// A syslog receiver says nothing: a read returns only when the
	// connection ends, whichever way.
	go func() {
		defer close(r.dead)
		buf := make([]byte, 512)
		for {
			if _, err := r.conn.Read(buf); err != nil {
				return
			}
		}
	}()
	return r, nil
}

// write sends b and returns the bytes written to the socket so far.
func (r *receiver) write(b []byte) (int64, error) {
	_ = r.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := r.w.Write(b); err != nil {
		return 0, err
	}
	if err := r.w.Flush(); err != nil {
		return 0, err
	}
	return r.counted.written.Load(), nil
}

// acked returns how many of the bytes written to the socket its peer has
// acknowledged.
func (r *receiver) acked() (int64, error) {
	q, err := sendQueue(r.tcp)
	if err != nil {
		return 0, err
	}
	return r.counted.written.Load() - int64(q), nil
}

func (r *receiver) isDead() bool {
	select {
	case <-r.dead:
		return true
	default:
		return false
	}
}

func (r *receiver) close() {
	_ = r.conn.Close()
	<-r.dead
}

// countingConn counts the bytes written to the socket (TLS records
// included), which the send queue is measured against.
type countingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}
