package e2e

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
)

// hostnames returns the HOSTNAME of every line of the file, in order:
// the node that streamed it.
func (r *rsyslog) hostnames() []string {
	var out []string
	for _, l := range r.lines() {
		out = append(out, strings.SplitN(l, " ", 2)[0])
	}
	return out
}

// streamingNode is the node whose metrics say it holds the stream's lock,
// or nil while none does; a node that does not answer is skipped.
func streamingNode(t *testing.T, c *testenv.Cluster) *testenv.Node {
	t.Helper()
	var holder *testenv.Node
	for _, nd := range c.Nodes {
		if p := nd.Process(); p == nil || exited(p) {
			continue
		}
		resp, err := http.Get(nd.APIURL() + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if streamingRe.Match(b) {
			if holder != nil {
				t.Fatalf("two nodes stream at once: %s and %s", holder.ID, nd.ID)
			}
			holder = nd
		}
	}
	return holder
}

var streamingRe = regexp.MustCompile(`(?m)^argus_audit_stream_streaming(\{[^}]*\})? 1$`)

func exited(p *testenv.ServerProcess) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// Three nodes all configured with one rsyslog: audit rows written
// through every node reach it, every seq in order, streamed by one node
// at a time; the streaming node killed with SIGKILL mid-load, another
// takes the stream over and the file still holds every seq with no gap
// (a resend's duplicates aside).
func TestAuditStreamCluster_EverySeqInOrderThroughTheStreamingNodesKill(t *testing.T) {
	rs := startRsyslog(t)
	c := testenv.StartCluster(t, 3, testenv.ClusterOptions{Name: "siem", Env: []string{
		"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.1/32", "ARGUS_OPS_TOKEN=" + opsToken,
		"ARGUS_AUDIT_STREAM_ADDR=" + rs.addr, "ARGUS_AUDIT_STREAM_MAX_LAG=5s"}})
	token := c.Operator(t, "alice", "remote_support")
	db, err := pgxpool.New(context.Background(), c.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	ctx := context.Background()

	// The nodes the writers call; the killed one is taken out.
	var alive atomic.Pointer[[]*testenv.Node]
	all := append([]*testenv.Node(nil), c.Nodes...)
	alive.Store(&all)
	perNode := sync.Map{}
	var ok atomic.Int64
	// Audited refusals (an activation without a reason), spread over
	// every live node, until n more have been answered; false if they
	// were not within a minute.
	act := func(n int64) bool {
		target := ok.Add(0) + n
		until := time.Now().Add(time.Minute)
		var wg sync.WaitGroup
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				hc := &http.Client{Timeout: 5 * time.Second}
				for i := w; ok.Load() < target && time.Now().Before(until); i++ {
					nodes := *alive.Load()
					nd := nodes[i%len(nodes)]
					cl := &apiclient.Client{BaseURL: nd.APIURL(), Token: token, OpsToken: opsToken, HTTP: hc}
					err := cl.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "acme", "agent": "cam-1", "reason": ""}, nil)
					if apiclient.IsCode(err, "reason_required") {
						ok.Add(1)
						v, _ := perNode.LoadOrStore(nd.ID, new(atomic.Int64))
						v.(*atomic.Int64).Add(1)
					}
				}
			}(w)
		}
		wg.Wait()
		return ok.Load() >= target
	}
	head := func() int64 {
		var n int64
		require.NoError(t, db.QueryRow(ctx, "SELECT coalesce(max(seq), 0) FROM events").Scan(&n))
		return n
	}

	require.True(t, act(1500), "1,500 audited refusals answered within a minute")
	testenv.Eventually(t, 30*time.Second, rs.hasEverySeq(head()), "the first rows, written through every node, in the file")
	var holder *testenv.Node
	testenv.Eventually(t, 10*time.Second, func() bool { holder = streamingNode(t, c); return holder != nil }, "one node streams")
	hosts := rs.hostnames()
	require.NotEmpty(t, hosts)
	assert.Equal(t, holder.ID, hosts[len(hosts)-1], "the node whose metrics say it streams is the one the receiver hears")
	var lockHolders int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND ((classid::bigint << 32) | objid::bigint) = $1`, int64(0x6172677573737472)).Scan(&lockHolders))
	assert.Equal(t, 1, lockHolders, "one session holds the stream's advisory lock")

	// Killed while rows are being written, so with some sent and not yet
	// accepted; the writers go on through the other two.
	busy := make(chan bool, 1)
	go func() { busy <- act(2000) }()
	before := head()
	testenv.Eventually(t, 30*time.Second, func() bool { return head() > before+300 }, "rows under way")
	var rest []*testenv.Node
	for _, nd := range c.Nodes {
		if nd != holder {
			rest = append(rest, nd)
		}
	}
	alive.Store(&rest)
	holder.Kill(t)
	killedAt := head()
	killed := time.Now()
	var next *testenv.Node
	testenv.Eventually(t, 30*time.Second, func() bool { next = streamingNode(t, c); return next != nil }, "another node takes the stream")
	t.Logf("%s took the stream %v after %s was killed", next.ID, time.Since(killed).Round(time.Millisecond), holder.ID)
	require.True(t, <-busy, "2,000 more answered within a minute, the streaming node killed meanwhile")
	require.True(t, act(500), "500 more answered within a minute")
	last := head()
	testenv.Eventually(t, 60*time.Second, rs.hasEverySeq(last), "every seq in the file")

	seqs, hosts := rs.seqs(), rs.hostnames()
	var max int64
	for i, s := range seqs {
		require.LessOrEqual(t, s, max+1, "line %d: seq %d after %d is a gap", i, s, max)
		if s > max {
			max = s
		}
	}
	assert.Equal(t, last, max)
	assert.Less(t, len(seqs), int(last)*2, "resends are a part, not the whole")
	assert.Equal(t, next.ID, hosts[len(hosts)-1], "the newest lines come from the node that took over")
	assert.Contains(t, hosts, holder.ID)
	for _, nd := range c.Nodes {
		v, _ := perNode.Load(nd.ID)
		require.NotNil(t, v, "%s wrote rows", nd.ID)
		assert.Positive(t, v.(*atomic.Int64).Load(), "%s wrote rows", nd.ID)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		var pos int64
		var node string
		_ = db.QueryRow(ctx, "SELECT seq, node FROM audit_stream_positions WHERE receiver = $1", rs.addr).Scan(&pos, &node)
		return pos == last && node == next.ID
	}, "the receiver's position is the last seq, moved by the node that took over")
	t.Logf("%d events (%d when %s was killed), %d lines in the file", last, killedAt, holder.ID, len(seqs))
}
