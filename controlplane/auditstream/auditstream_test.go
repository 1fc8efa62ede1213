package auditstream_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/auditstream"
	"github.com/argus-remote/argus/controlplane/mail"
	"github.com/argus-remote/argus/internal/smtptest"
	"github.com/argus-remote/argus/internal/testcert"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// syncBuffer is a log sink the test reads while the streamer writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	*auditstream.Streamer
	stop func()
	logs *syncBuffer
}

// startStreamer runs a streamer on pool's database to addr until the test
// ends or stop is called.
func startStreamer(t *testing.T, pool *pgxpool.Pool, addr string, mutate func(*auditstream.Config), sender *mail.Sender) *running {
	t.Helper()
	cfg := auditstream.Config{Addr: addr, MaxLag: time.Minute, MaxMessage: 8192, Hostname: "node-1", Settle: 200 * time.Millisecond}
	if mutate != nil {
		mutate(&cfg)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := auditstream.New(cfg, func(ctx context.Context) (*pgx.Conn, error) {
		return pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	}, sender, log)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return &running{Streamer: s, stop: stop, logs: logs}
}

// record writes n audited actions, one transaction each.
func record(t *testing.T, pool *pgxpool.Pool, n int, e audit.Entry) {
	t.Helper()
	if e.Actor == "" {
		e = audit.Entry{Actor: "operator:alice", Action: "support.activate", Outcome: audit.Denied,
			TenantID: "7f1b0a34-2a7c-4c55-9a47-1c0f7d7c2a11", Detail: map[string]any{"code": "tenant_not_armed"}}
	}
	for i := 0; i < n; i++ {
		require.NoError(t, audit.Write(context.Background(), pool, e))
	}
}

func position(t *testing.T, pool *pgxpool.Pool, addr string) int64 {
	t.Helper()
	var seq int64
	err := pool.QueryRow(context.Background(), "SELECT seq FROM audit_stream_positions WHERE receiver = $1", addr).Scan(&seq)
	if err == pgx.ErrNoRows {
		return -1
	}
	require.NoError(t, err)
	return seq
}

func TestFormat_EscapesSDParamValues(t *testing.T) {
	nasty := `a"b\c]d` + "\n[x@1 y=\"z\"]"
	ev := audit.Event{ID: "e1", OccurredAt: "x", Actor: "operator:" + nasty, Action: "support.activate", Outcome: "denied",
		Reason: nasty, Detail: map[string]any{"path": `C:\x]"`}}
	canon, err := audit.Canonical(ev)
	require.NoError(t, err)
	hash := bytes.Repeat([]byte{0xab}, 32)
	msg, err := auditstream.Format(7, hash, time.Date(2026, 1, 2, 3, 4, 5, 678900000, time.UTC), canon, "node 1", 8192)
	require.NoError(t, err)
	s := string(msg)
	assert.True(t, strings.HasPrefix(s, "<109>1 2026-01-02T03:04:05.678900Z node_1 argus-server 4242 audit [argus@32473 "), s)
	assert.Contains(t, s, `reason="a\"b\\c\]d`, "quote, backslash and ] are escaped")
	params, err := parseSD(s)
	require.NoError(t, err, s)
	assert.Equal(t, "7", params["seq"])
	assert.Equal(t, hex.EncodeToString(hash), params["hash"])
	assert.Equal(t, "operator:"+nasty, params["actor"])
	assert.Equal(t, nasty, params["reason"])
	var detail map[string]string
	require.NoError(t, json.Unmarshal([]byte(params["detail"]), &detail))
	assert.Equal(t, `C:\x]"`, detail["path"])
	assert.NotContains(t, params, "truncated")
}

func TestFormat_OversizedDetailIsCutToTheBoundAndSaysSo(t *testing.T) {
	big := strings.Repeat(`]"é`, 20000) // escapes and multi-byte runes at every cut
	canon, err := audit.Canonical(audit.Event{ID: "e1", Actor: "system", Action: "agent.enroll", Outcome: "success",
		Reason: strings.Repeat("r", 3000), Detail: map[string]any{"blob": big}})
	require.NoError(t, err)
	for _, max := range []int{auditstream.MinMessage, 8192, 64 << 10} {
		msg, err := auditstream.Format(9, make([]byte, 32), time.Now(), canon, "n", max)
		require.NoError(t, err)
		assert.LessOrEqual(t, len(msg), max)
		assert.Greater(t, len(msg), max-8, "the cut leaves no more room than a rune and its escape")
		params, err := parseSD(string(msg))
		require.NoError(t, err)
		assert.Equal(t, "9", params["seq"], "seq and hash are never cut")
		assert.Len(t, params["hash"], 64)
		var full map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(canon, &full))
		assert.True(t, strings.HasPrefix(string(full["detail"]), params["detail"]), "the detail kept is the start of the detail")
		assert.Contains(t, params["truncated"], "detail:"+strconv.Itoa(len(full["detail"])))
		if max == auditstream.MinMessage {
			assert.Equal(t, "detail:"+strconv.Itoa(len(full["detail"]))+",reason:3000", params["truncated"], "the reason goes once the detail is gone")
		} else {
			assert.Equal(t, strings.Repeat("r", 3000), params["reason"])
		}
	}
}

// Every event reaches the receiver in seq order, framed so that a
// newline inside one is no boundary, and within a second of its commit.
func TestStream_SendsEveryEventInOrderWithinASecond(t *testing.T) {
	pool := testenv.Pool(t)
	rcv := startReceiver(t, "127.0.0.1:0")
	s := startStreamer(t, pool, rcv.addr, nil, nil)
	testenv.Eventually(t, 10*time.Second, s.Streaming, "streaming")

	record(t, pool, 1, audit.Entry{Actor: "system", Action: "tenant.arm", Outcome: audit.Success, Reason: "line one\nline two"})
	record(t, pool, 199, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, rcv.has(200), "all 200 events received")
	assert.Empty(t, rcv.problems())
	assert.Equal(t, "line one\nline two", rcv.all()[0].params["reason"])
	seqs := rcv.seqs()
	for i, s := range seqs {
		require.Equal(t, int64(i+1), s, "in order, once each")
	}

	// One more, timed from its commit.
	committed := time.Now()
	record(t, pool, 1, audit.Entry{})
	testenv.Eventually(t, 5*time.Second, rcv.has(201), "event 201 received")
	latency := time.Since(committed)
	t.Logf("commit to receiver: %v", latency)
	assert.Less(t, latency, time.Second)

	testenv.Eventually(t, 5*time.Second, func() bool { return position(t, pool, rcv.addr) == 201 }, "position stored")
	assert.Equal(t, int64(201), s.Accepted())
}

// A receiver that goes away loses nothing: what it had not accepted is
// sent again when it is back, and a streamer that restarts carries on
// from the stored position.
func TestStream_ResumesAfterReceiverOutageAndRestart(t *testing.T) {
	pool := testenv.Pool(t)
	rcv := startReceiver(t, "127.0.0.1:0")
	s := startStreamer(t, pool, rcv.addr, nil, nil)
	record(t, pool, 50, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, func() bool { return position(t, pool, rcv.addr) == 50 }, "50 accepted")

	rcv.stop()
	record(t, pool, 50, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(s.logs.String(), "receiver unreachable") }, "outage seen")
	assert.Equal(t, int64(50), position(t, pool, rcv.addr), "nothing sent into the outage counts as accepted")
	rcv.restart()
	testenv.Eventually(t, 15*time.Second, rcv.has(100), "all 100 after the outage")
	testenv.Eventually(t, 5*time.Second, func() bool { return position(t, pool, rcv.addr) == 100 }, "100 accepted")

	s.stop()
	record(t, pool, 20, audit.Entry{})
	before := len(rcv.all())
	s2 := startStreamer(t, pool, rcv.addr, nil, nil)
	testenv.Eventually(t, 10*time.Second, rcv.has(120), "all 120 after a restart")
	after := rcv.all()[before:]
	require.NotEmpty(t, after)
	assert.Equal(t, "101", after[0].params["seq"], "the restarted streamer starts after the stored position")
	require.NoError(t, inOrderNoGaps(rcv.seqs()))
	assert.Empty(t, rcv.problems())
	testenv.Eventually(t, 5*time.Second, func() bool { return s2.Accepted() == 120 }, "120 accepted")
}

// Bytes whose connection ends within Settle of their acknowledgement (a
// receiver that died with them unread, or read them and died) are not
// accepted, however well the writes went: they are sent again.
func TestStream_ConnectionEndedWithinSettleAcceptsNothing(t *testing.T) {
	pool := testenv.Pool(t)
	rcv := startReceiver(t, "127.0.0.1:0")
	s := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.Settle = 2 * time.Second }, nil)
	record(t, pool, 10, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, rcv.has(10), "10 received")
	// Killed before the 10 settled: they are sent again.
	rcv.stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(s.logs.String(), "resending") }, "loss seen")
	assert.Less(t, position(t, pool, rcv.addr), int64(10), "a connection that ended within Settle accepts nothing")
	rcv.restart()
	testenv.Eventually(t, 10*time.Second, func() bool { return position(t, pool, rcv.addr) == 10 }, "10 accepted on the new connection")
	var second []int64
	for _, m := range rcv.all() {
		if m.conn == 2 {
			n, _ := strconv.ParseInt(m.params["seq"], 10, 64)
			second = append(second, n)
		}
	}
	require.NotEmpty(t, second)
	assert.Equal(t, int64(1), second[0], "resent from the first unaccepted seq")
}

// Bytes still in this host's send queue, or on their way, are not
// accepted: the position never covers more than the receiver's kernel
// has acknowledged, even on a connection that stays open.
func TestStream_UnacknowledgedBytesAreNotAccepted(t *testing.T) {
	pool := testenv.Pool(t)
	rcv := startReceiver(t, "127.0.0.1:0")
	rcv.pause()
	s := startStreamer(t, pool, rcv.addr, nil, nil)
	// 2,000 messages of 8 KiB: far more than the socket buffers of both
	// ends hold, so the stream stalls with bytes in this host's queue.
	const n = 2000
	record(t, pool, n, audit.Entry{Actor: "system", Action: "agent.manifest", Outcome: audit.Success,
		Detail: map[string]any{"blob": strings.Repeat("x", 7600)}})
	// The bound is generous: in one run of the whole suite, on 2 cores
	// shared with the e2e tests, nothing was accepted within 10 s.
	testenv.Eventually(t, 30*time.Second, func() bool { return s.Accepted() > 0 }, "some accepted")
	time.Sleep(time.Second) // five Settles: what would be accepted wrongly would be by now
	accepted := position(t, pool, rcv.addr)
	unread := rcv.unread()
	require.Less(t, accepted, int64(n), "the stalled stream is not all accepted")

	rcv.resume()
	testenv.Eventually(t, 20*time.Second, rcv.has(n), "all received once read")
	var end int64
	for _, m := range rcv.all() {
		if m.conn == 1 && m.params["seq"] == strconv.FormatInt(accepted, 10) {
			end = m.end
		}
	}
	require.NotZero(t, end, "seq %d came on the first connection", accepted)
	t.Logf("accepted seq %d (%d bytes) while %d bytes sat unread at the receiver", accepted, end, unread)
	assert.LessOrEqual(t, end, unread, "accepted only what the receiver's kernel acknowledged")
	testenv.Eventually(t, 10*time.Second, func() bool { return position(t, pool, rcv.addr) == n }, "all accepted")
}

// Over TLS the receiver is verified against the CA file: with it the
// events arrive; without it (a certificate no system root signed) nothing
// is sent, and the refusal is logged.
func TestStream_OverTLSWithACAFile(t *testing.T) {
	pool := testenv.Pool(t)
	certFile, keyFile := testcert.Files(t)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	require.NoError(t, err)
	rcv := startTLSReceiver(t, cert)
	untrusted := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.TLS = true }, nil)
	record(t, pool, 5, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(untrusted.logs.String(), "certificate") },
		"an unknown certificate refused")
	assert.Empty(t, rcv.all())
	assert.Equal(t, int64(0), position(t, pool, rcv.addr))
	untrusted.stop()

	s := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.TLS, c.CAFile = true, certFile }, nil)
	testenv.Eventually(t, 10*time.Second, rcv.has(5), "5 received over TLS")
	testenv.Eventually(t, 5*time.Second, func() bool { return s.Accepted() == 5 }, "5 accepted")
	require.NoError(t, inOrderNoGaps(rcv.seqs()))
	for _, err := range rcv.problems() {
		assert.ErrorContains(t, err, "tls: bad certificate", "only the untrusted handshakes failed")
	}
}

// holderPID is the backend holding the stream's advisory lock.
func holderPID(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var pid int
	err := pool.QueryRow(context.Background(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND ((classid::bigint << 32) | objid::bigint) = $1`, int64(0x6172677573737472)).Scan(&pid)
	if err == pgx.ErrNoRows {
		return 0
	}
	require.NoError(t, err)
	return pid
}

// Two streamers on one database: one streams; when its database session
// dies (as when its process is killed), the other takes over from the
// stored position, and the first stands by.
func TestStream_AdvisoryLockTakeover(t *testing.T) {
	pool := testenv.Pool(t)
	rcv := startReceiver(t, "127.0.0.1:0")
	a := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.Hostname = "node-a" }, nil)
	testenv.Eventually(t, 10*time.Second, a.Streaming, "a streams")
	b := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.Hostname = "node-b" }, nil)
	record(t, pool, 30, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, func() bool { return position(t, pool, rcv.addr) == 30 }, "30 accepted")
	assert.False(t, b.Streaming(), "b waits while a holds the lock")
	for _, m := range rcv.all() {
		require.Contains(t, m.raw, " node-a argus-server ", "only a streamed")
	}

	pid := holderPID(t, pool)
	require.NotZero(t, pid)
	_, err := pool.Exec(context.Background(), "SELECT pg_terminate_backend($1)", pid)
	require.NoError(t, err)
	testenv.Eventually(t, 10*time.Second, b.Streaming, "b takes over")
	testenv.Eventually(t, 10*time.Second, func() bool { return !a.Streaming() }, "a stands down")
	record(t, pool, 30, audit.Entry{})
	testenv.Eventually(t, 10*time.Second, func() bool { return position(t, pool, rcv.addr) == 60 }, "60 accepted")
	assert.False(t, a.Streaming() && b.Streaming(), "never both")
	var fromB []int64
	for _, m := range rcv.all() {
		if strings.Contains(m.raw, " node-b argus-server ") {
			n, _ := strconv.ParseInt(m.params["seq"], 10, 64)
			fromB = append(fromB, n)
		}
	}
	require.NotEmpty(t, fromB)
	assert.Equal(t, int64(31), fromB[0], "b starts after what a had accepted")
	require.NoError(t, inOrderNoGaps(rcv.seqs()))
	var node string
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT node FROM audit_stream_positions WHERE receiver = $1", rcv.addr).Scan(&node))
	assert.Equal(t, "node-b", node)
}

// Events that wait longer than MaxLag are alarmed once per gap: a
// counter, a log line and a mail; the lag is a gauge.
func TestStream_GapIsAlarmed(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	smtp := smtptest.Start(t, smtptest.Options{})
	port, _ := strconv.Atoi(smtp.Port)
	sender, err := mail.New(mail.Config{Host: smtp.Host, Port: port, From: "argus@example.test", To: []string{"soc@example.test"}},
		slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	pool := testenv.Pool(t)
	rcv := startReceiver(t, "127.0.0.1:0")
	rcv.stop() // nothing listens
	s := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.MaxLag = time.Second }, sender)
	record(t, pool, 3, audit.Entry{})

	select {
	case m := <-smtp.Messages:
		assert.Contains(t, m.Data, "ARGUS audit stream: 3 events not at the SIEM")
		assert.Contains(t, m.Data, "Last seq accepted: 0")
	case <-time.After(20 * time.Second):
		t.Fatal("no gap mail")
	}
	assert.Contains(t, s.logs.String(), "audit stream gap")
	metrics := func() map[string]float64 {
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(context.Background(), &rm))
		out := map[string]float64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					for _, p := range d.DataPoints {
						out[m.Name] += float64(p.Value)
					}
				case metricdata.Gauge[int64]:
					for _, p := range d.DataPoints {
						out[m.Name] = float64(p.Value)
					}
				case metricdata.Gauge[float64]:
					for _, p := range d.DataPoints {
						out[m.Name] = p.Value
					}
				}
			}
		}
		return out
	}
	m := metrics()
	assert.Equal(t, 1.0, m["argus_audit_stream_gaps"], fmt.Sprint(m))
	assert.Greater(t, m["argus_audit_stream_lag_seconds"], 1.0)
	assert.Equal(t, 0.0, m["argus_audit_stream_last_seq"])
	assert.Equal(t, 0.0, m["argus_audit_stream_sent_seq"])
	assert.Equal(t, 1.0, m["argus_audit_stream_streaming"])

	rcv.restart()
	testenv.Eventually(t, 15*time.Second, func() bool { return s.Accepted() == 3 }, "caught up")
	testenv.Eventually(t, 5*time.Second, func() bool { return strings.Contains(s.logs.String(), "audit stream gap closed") }, "closed")
	m = metrics()
	assert.Equal(t, 3.0, m["argus_audit_stream_last_seq"])
	assert.Equal(t, 3.0, m["argus_audit_stream_sent_seq"])
	assert.Equal(t, 0.0, m["argus_audit_stream_lag_seconds"])
	assert.Equal(t, 1.0, m["argus_audit_stream_gaps"], "one alarm for one gap")
}

// An event that cannot be made a message (here: a row whose canonical
// bytes someone broke by hand) holds the stream back rather than leave a
// hole at the receiver, and the wait is alarmed as a gap.
func TestStream_AnEventThatCannotBeSentIsNeverSkipped(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	record(t, pool, 1, audit.Entry{})
	_, err := pool.Exec(ctx, `INSERT INTO events (seq, id, occurred_at, action, payload, canonical, prev_hash, hash)
		VALUES (2, gen_random_uuid(), now(), 'x', '{}', '\x7b', decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'))`)
	require.NoError(t, err)
	record(t, pool, 1, audit.Entry{})

	rcv := startReceiver(t, "127.0.0.1:0")
	s := startStreamer(t, pool, rcv.addr, func(c *auditstream.Config) { c.MaxLag = time.Second }, nil)
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(s.logs.String(), "audit stream gap") }, "the wait alarmed")
	assert.Contains(t, s.logs.String(), "an event cannot be sent")
	assert.Equal(t, []int64{1}, rcv.seqs(), "nothing after the event that cannot be sent")
	assert.Equal(t, int64(1), position(t, pool, rcv.addr))
}
