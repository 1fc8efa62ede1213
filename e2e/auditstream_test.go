package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
)

// rsyslog is Debian's rsyslogd, run by the test in the foreground with
// its own configuration and work directory: imtcp on a loopback port,
// every message's structured data written to a file.
type rsyslog struct {
	t    *testing.T
	bin  string
	dir  string
	addr string
	out  string

	cmd  *exec.Cmd
	done chan struct{}
	logs bytes.Buffer
}

func startRsyslog(t *testing.T) *rsyslog {
	t.Helper()
	r := &rsyslog{t: t, bin: testenv.NeedTool(t, "rsyslogd", "rsyslog"), dir: testenv.TempDir(t), addr: testenv.FreeAddr(t)}
	r.out = filepath.Join(r.dir, "audit.log")
	_, port, _ := net.SplitHostPort(r.addr)
	// The main queue is direct: a message is in the file before the next
	// is read from the connection, so a stopped rsyslog has nothing
	// queued in memory to lose.
	conf := fmt.Sprintf(`global(workDirectory=%q maxMessageSize="64k")
main_queue(queue.type="Direct")
module(load="imtcp")
template(name="siem" type="string" string="%%hostname%% %%app-name%% %%msgid%% %%structured-data%%\n")
ruleset(name="siem") {
  action(type="omfile" file=%q template="siem")
}
input(type="imtcp" address="127.0.0.1" port=%q ruleset="siem")
`, r.dir, r.out, port)
	require.NoError(t, os.WriteFile(filepath.Join(r.dir, "rsyslog.conf"), []byte(conf), 0o644))
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *rsyslog) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, "-n", "-f", filepath.Join(r.dir, "rsyslog.conf"), "-i", filepath.Join(r.dir, "rsyslogd.pid"))
	r.cmd.Stdout, r.cmd.Stderr = &r.logs, &r.logs
	require.NoError(r.t, r.cmd.Start())
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(r.cmd, r.done)
	testenv.Eventually(r.t, 15*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", r.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "rsyslogd listening")
}

// stop ends rsyslogd with SIGTERM and waits for it.
func (r *rsyslog) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

var seqParam = regexp.MustCompile(`\[argus@32473 seq="(\d+)" hash="[0-9a-f]{64}" action="`)

// lines returns the lines of the file, in order.
func (r *rsyslog) lines() []string {
	f, err := os.Open(r.out)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 128<<10), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// seqs returns the seq of every line of the file, in order.
func (r *rsyslog) seqs() []int64 {
	var out []int64
	for _, l := range r.lines() {
		m := seqParam.FindStringSubmatch(l)
		if m == nil {
			r.t.Errorf("a line without the audit's structured data: %q", l)
			continue
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		out = append(out, n)
	}
	return out
}

// hasEverySeq returns a check, for Eventually, that the file holds every
// seq from 1 to n (in any order, duplicates allowed).
func (r *rsyslog) hasEverySeq(n int64) func() bool {
	return func() bool {
		seen := map[int64]bool{}
		for _, s := range r.seqs() {
			seen[s] = true
		}
		for i := int64(1); i <= n; i++ {
			if !seen[i] {
				return false
			}
		}
		return true
	}
}

// The test: 10,000 audited actions, streamed to a real rsyslog
// that is stopped for 30 s in the middle, with argus-server killed
// (SIGKILL) and restarted once; the file then holds every seq from the
// first to the last, in order, duplicates aside.
func TestAuditStream_RsyslogGetsEverySeqThroughOutageAndKill(t *testing.T) {
	const total, outage = 10_000, 30 * time.Second
	rs := startRsyslog(t)
	env := testenv.NewEnv(t)
	token := env.Operator(t, "alice", "remote_support")
	vars := []string{"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.1/32", "ARGUS_OPS_TOKEN=" + opsToken,
		"ARGUS_AUDIT_STREAM_ADDR=" + rs.addr, "ARGUS_AUDIT_STREAM_MAX_LAG=5s", "ARGUS_NODE_ID=siem-node"}
	srv := env.StartServer(t, vars)
	db, err := pgxpool.New(context.Background(), env.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(db.Close)

	var url atomic.Pointer[string]
	setURL := func(u string) { url.Store(&u) }
	setURL(srv.APIURL)
	// Audited refusals through the real API, the cheapest real events: an
	// activation with no reason passes the 3-factor gate and is refused,
	// in both trails.
	var ok atomic.Int64
	act := func(ctx context.Context, n int64) {
		var wg sync.WaitGroup
		target := ok.Load() + n
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hc := &http.Client{Timeout: 5 * time.Second}
				for ok.Load() < target && ctx.Err() == nil {
					c := &apiclient.Client{BaseURL: *url.Load(), Token: token, OpsToken: opsToken, HTTP: hc}
					err := c.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": "cam-1", "reason": ""}, nil)
					if apiclient.IsCode(err, "reason_required") {
						ok.Add(1)
					} else {
						time.Sleep(10 * time.Millisecond) // the server is down: pace the retries
					}
				}
			}()
		}
		wg.Wait()
	}
	events := func() int64 {
		var n int64
		require.NoError(t, db.QueryRow(context.Background(), "SELECT coalesce(max(seq), 0) FROM events").Scan(&n))
		return n
	}
	ctx := context.Background()
	started := time.Now()

	act(ctx, 3000)
	testenv.Eventually(t, 30*time.Second, rs.hasEverySeq(events()), "the first 3,000 in the file")
	t.Logf("3,000 actions streamed in %v", time.Since(started).Round(time.Millisecond))

	// The receiver goes away for 30 s; the actions go on.
	rs.stop()
	down := time.Now()
	act(ctx, 3000)
	testenv.Eventually(t, outage, func() bool { return strings.Contains(srv.Logs(), "audit stream gap") },
		"the gap alarmed while the receiver is down")
	assert.Regexp(t, `argus_audit_stream_gaps_total(\{[^}]*\})? 1\n`, scrape(t, srv.APIURL), "the gap is counted")
	time.Sleep(time.Until(down.Add(outage))) // the outage itself: its length is what is tested
	rs.start()
	backlog := events()
	testenv.Eventually(t, 30*time.Second, rs.hasEverySeq(backlog), "the backlog in the file once rsyslog is back")

	// Killed with actions under way (so with events sent and not yet
	// accepted), restarted, and on to 10,000.
	busy := make(chan struct{})
	go func() { defer close(busy); act(ctx, 2000) }()
	testenv.Eventually(t, 30*time.Second, func() bool { return events() > backlog+500 }, "actions under way")
	require.NoError(t, srv.Cmd.Process.Signal(syscall.SIGKILL))
	<-srv.Done()
	killedAt := events()
	srv = env.StartServer(t, vars)
	setURL(srv.APIURL)
	<-busy
	act(ctx, total-ok.Load())
	last := events()
	require.GreaterOrEqual(t, last, int64(total), "every refusal is an event")
	testenv.Eventually(t, 60*time.Second, rs.hasEverySeq(last), "every seq in the file")
	seqs := rs.seqs()
	t.Logf("%d events (%d when the server was killed), %d lines in the file, all there %v after the start",
		last, killedAt, len(seqs), time.Since(started).Round(time.Millisecond))

	var max int64
	for i, s := range seqs {
		require.LessOrEqual(t, s, max+1, "line %d: seq %d after %d is a gap", i, s, max)
		if s > max {
			max = s
		}
	}
	assert.Equal(t, last, max)
	assert.Less(t, len(seqs), int(last)*2, "resends are a part, not the whole")
	testenv.Eventually(t, 10*time.Second, func() bool {
		var pos int64
		_ = db.QueryRow(ctx, "SELECT seq FROM audit_stream_positions WHERE receiver = $1", rs.addr).Scan(&pos)
		return pos == last
	}, "the receiver's position is the last seq")
	metrics := scrape(t, srv.APIURL)
	assert.Regexp(t, fmt.Sprintf(`argus_audit_stream_last_seq(\{[^}]*\})? %d\n`, last), metrics)
	assert.Regexp(t, `argus_audit_stream_streaming(\{[^}]*\})? 1\n`, metrics)
	assert.Regexp(t, `argus_audit_stream_lag_seconds(\{[^}]*\})? 0\n`, metrics)
}
