package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// rotation hands every call to the node after the last one's, so no two
// consecutive calls of the walkthrough reach the same node.
type rotation struct {
	c     *testenv.Cluster
	mu    sync.Mutex
	last  int // 1-based; 0 before the first call
	calls map[string]int
}

func (r *rotation) next(t *testing.T) *testenv.Node {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.last%len(r.c.Nodes) + 1
	require.NotEqual(t, r.last, i, "two consecutive calls to %s", r.c.Node(i).ID)
	r.last = i
	nd := r.c.Node(i)
	r.calls[nd.ID]++
	return nd
}

// indicatorRe finds the tenant's status topic in what the viewer reads.
var indicatorRe = regexp.MustCompile(`argus/v1/status/tenants/[0-9a-f-]+/remote-support`)

// tenantTokenRe reads what `argusctl tenant token create` prints.
var tenantTokenRe = regexp.MustCompile(`(argus_vwr_\S+)[\s\S]*tenant token (\S+) for`)

// TestWalkthrough_ClusterEveryCallToAnotherNode follows the README's
// walkthrough on three nodes behind HAProxy, the agent on HAProxy's
// broker, every argusctl and HTTP call (and the MQTT monitor's
// connection) to another node than the last. Every node streams the
// audit to one rsyslog (one at a time, by the stream's lock), and the
// signing key rotates and retires under the running nodes.
func TestWalkthrough_ClusterEveryCallToAnotherNode(t *testing.T) {
	began := time.Now()
	rs := startRsyslog(t)
	c := testenv.StartCluster(t, 3, testenv.ClusterOptions{Name: "walk", Env: []string{
		"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.0/8", "ARGUS_OPS_TOKEN=" + opsToken,
		"ARGUS_AUDIT_STREAM_ADDR=" + rs.addr}})
	r := &rotation{c: c, calls: map[string]int{}}

	// First operator: a server subcommand on the shared database.
	token := c.Operator(t, "admin", "operator:admin", "tenant:admin", "tenant:arm", "agent:admin", "remote_support", "audit:read")
	cfgDir := t.TempDir()
	run := func(args ...string) (string, string, error) {
		t.Helper()
		nd := r.next(t)
		cmdEnv := []string{"ARGUSCTL_SERVER=" + nd.APIURL(), "ARGUSCTL_TOKEN=" + token, "ARGUSCTL_OPS_TOKEN=" + opsToken,
			"ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + cfgDir}
		return testenv.Run(t, cmdEnv, "argusctl", args...)
	}
	ctl := func(args ...string) string {
		t.Helper()
		out, stderr, err := run(args...)
		require.NoError(t, err, "argusctl %v\n%s", args, stderr)
		return out
	}
	viewer := func(method, path, bearer string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, r.next(t).APIURL()+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, body
	}
	tenantToken := func(rights string) (string, string) {
		t.Helper()
		out, stderr, err := run("tenant", "token", "create", "acme", "--rights", rights, "--description", "walk "+rights)
		require.NoError(t, err, stderr)
		m := tenantTokenRe.FindStringSubmatch(out + "\n" + stderr)
		require.NotNil(t, m, "tenant token create printed %q %q", out, stderr)
		return m[1], m[2]
	}
	assert.Contains(t, ctl("whoami"), "admin")

	// Hotfix keys first: the agent's configuration names the public key.
	keys := t.TempDir()
	_, stderr, err := testenv.Run(t, nil, "argusctl", "patch", "keygen", "--out", keys)
	require.NoError(t, err, stderr)
	h := newHostFixture(t)
	streamer := filepath.Join(t.TempDir(), "streamer")
	require.NoError(t, os.MkdirAll(filepath.Join(streamer, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(streamer, "bin", "run.sh"), []byte("#!/bin/sh\necho v1\n"), 0o644))
	base, err := os.ReadFile(h.config)
	require.NoError(t, err)
	config := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(config, append(base, []byte(fmt.Sprintf("patch-keys: [%s]\npatch-roots:\n  streamer: %s\n",
		filepath.Join(keys, "patch-signing.pub"), streamer))...), 0o600))

	// Enrolling an agent: to one node, connected through HAProxy's broker.
	ctl("tenant", "create", "acme")
	enr := strings.TrimSpace(ctl("agent", "enroll", "--tenant", "acme", "--name", "cam-gw-1"))
	state := filepath.Join(t.TempDir(), "agent-state")
	out, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", r.next(t).APIURL(), "--token", enr, "--state-dir", state)
	require.NoError(t, err, stderr)
	agentID := strings.Fields(strings.TrimPrefix(out, "enrolled as agent "))[0]
	st, err := os.ReadFile(filepath.Join(state, "enrollment.json"))
	require.NoError(t, err)
	assert.Contains(t, string(st), c.LB.BrokerURL, "the agent is handed HAProxy's broker")
	testenv.StartAgent(t, state, "ARGUS_AGENT_CONFIG="+config)
	testenv.Eventually(t, 20*time.Second, func() bool { return strings.Contains(ctl("agent", "list", "--tenant", "acme"), "yes") }, "agent online")
	assert.Contains(t, ctl("agent", "show", agentID), "manifest (advisory")

	// Watching it: an SRE's MQTT monitor on the broker of another node
	// than the one that minted its token, whichever node holds the agent.
	monTok := strings.TrimSpace(ctl("operator", "token", "create", "admin", "--scope", "monitor"))
	mon := watch(t, r.next(t).BrokerURL(), "monitor-walk", "monitor", monTok, topics.StatusFilter)
	mon.await("argus/v1/status/agents/"+agentID, agentOnline(true), "the monitor sees the agent online")

	// Opening a session.
	ctl("tenant", "consent", "record", "acme", "--document-id", "DOC-2026-0042", "--signed-by", "Jane Roe, CISO", "--signed-at", "2026-11-20")
	ctl("tenant", "arm", "acme", "--reason", "INC-2231: stream drops at site 4")
	assert.Contains(t, ctl("tenant", "show", "acme"), "DOC-2026-0042")
	activate := func() apiclient.Session {
		t.Helper()
		var sess apiclient.Session
		require.NoError(t, json.Unmarshal([]byte(ctl("support", "activate", "--tenant", "acme", "--agent", agentID, "--reason", "INC-2231", "--ttl", "15m", "-o", "json")), &sess))
		require.True(t, sess.Active)
		return sess
	}
	sess := activate()
	walkSessionCommands(t, ctl, sess.ID, agentID, h)
	assert.Contains(t, ctl("agent", "show", agentID), "capabilities (advisory", "recorded by one node, shown by the next")

	// Watching it / what the tenant sees: a view-only token read on
	// another node than the one that minted it.
	viewTok, _ := tenantToken("view")
	status, body := viewer("GET", "/v1/viewer", viewTok)
	require.Equal(t, http.StatusOK, status, string(body))
	// The session itself reaches the tenant on the retained status topic
	// named here (TestClusterStatus_* follow it on every node).
	assert.Contains(t, string(body), `"tenant":"acme"`, "a token minted on one node is taken by another")
	assert.Contains(t, string(body), "/remote-support", "the tenant's status topic")
	indicator := indicatorRe.FindString(string(body))
	require.NotEmpty(t, indicator, "the tenant's status topic in %s", body)
	mon.await(indicator, tenantActive(true, sess.ID), "the monitor sees the session active")

	// Hotfix patches: built and verified offline, applied through a node
	// that may not hold the agent.
	src := filepath.Join(t.TempDir(), "run.sh")
	require.NoError(t, os.WriteFile(src, []byte("#!/bin/sh\necho v2\n"), 0o750))
	bundle := filepath.Join(t.TempDir(), "hf-007.bundle")
	_, stderr, err = testenv.Run(t, nil, "argusctl", "patch", "build", "--key", filepath.Join(keys, "patch-signing.key"),
		"--id", "HF-2026-007", "--version", "4.2.1", "--root", "streamer", "--not-after", "2099-01-01", "--out", bundle, src+"=bin/run.sh")
	require.NoError(t, err, stderr)
	out, stderr, err = testenv.Run(t, nil, "argusctl", "patch", "verify", "--pub", filepath.Join(keys, "patch-signing.pub"), bundle)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "valid: patch HF-2026-007 version 4.2.1")
	ctl("support", "patch", "--session", sess.ID, bundle)
	patched, err := os.ReadFile(filepath.Join(streamer, "bin", "run.sh"))
	require.NoError(t, err)
	assert.Equal(t, "#!/bin/sh\necho v2\n", string(patched), "the patch is on the agent's disk")

	assert.Contains(t, ctl("support", "deactivate", sess.ID), "deactivated")
	assert.NotContains(t, ctl("support", "list", "--active"), sess.ID)
	mon.await(indicator, tenantActive(false, ""), "the monitor sees the session ended")

	// Checking a session transcript: the operator's and the tenant's copy,
	// each through its own node, verified offline.
	tdir := t.TempDir()
	file, keyFile := filepath.Join(tdir, "session.transcript.json"), filepath.Join(tdir, "control-plane.pub")
	ctl("support", "transcript", sess.ID, "--out", file)
	ctl("audit", "signing-key", "--out", keyFile)
	out, stderr, err = testenv.Run(t, nil, "argusctl", "audit", "verify-transcript", file, "--key", keyFile)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "verified")
	transcript, err := os.ReadFile(file)
	require.NoError(t, err)
	for _, action := range []string{"support.activate", "support.command", "support.session.end"} {
		assert.Contains(t, string(transcript), action, "the transcript has %s", action)
	}
	status, body = viewer("GET", "/v1/viewer/sessions/"+sess.ID+"/transcript", viewTok)
	require.Equal(t, http.StatusOK, status, string(body))
	tenantFile := filepath.Join(tdir, "tenant.transcript.json")
	require.NoError(t, os.WriteFile(tenantFile, body, 0o600))
	out, stderr, err = testenv.Run(t, nil, "argusctl", "audit", "verify-transcript", tenantFile, "--key", keyFile)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "verified")

	// The tenant's end button, pressed on another node than the one
	// that opened the session.
	sess = activate()
	endTok, _ := tenantToken("view,end")
	status, body = viewer("POST", "/v1/viewer/sessions/"+sess.ID+"/end", endTok)
	require.Equal(t, http.StatusOK, status, string(body))
	assert.NotContains(t, ctl("support", "list", "--active"), sess.ID)

	// Approval before access: asked on one node, approved on the next.
	ctl("tenant", "approval", "set", "acme", "--mode", "required", "--timeout", "1m")
	assert.Contains(t, ctl("tenant", "approval", "show", "acme"), "required")
	approveTok, approverID := tenantToken("view,approve")
	type result struct {
		out, stderr string
		err         error
	}
	done := make(chan result, 1)
	go func() {
		out, stderr, err := run("support", "activate", "--tenant", "acme", "--agent", agentID, "--reason", "INC-2232", "--ttl", "15m")
		done <- result{out, stderr, err}
	}()
	var pendingID string
	testenv.Eventually(t, 20*time.Second, func() bool {
		status, body := viewer("GET", "/v1/viewer/approvals", approveTok)
		var list struct {
			Approvals []struct {
				SessionID string `json:"id"`
			} `json:"approvals"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Approvals) == 0 {
			return false
		}
		pendingID = list.Approvals[0].SessionID
		return pendingID != ""
	}, "the request reaches the tenant")
	status, body = viewer("POST", "/v1/viewer/sessions/"+pendingID+"/approve", approveTok)
	require.Equal(t, http.StatusOK, status, string(body))
	var res result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("argusctl did not return after the approval")
	}
	require.NoError(t, res.err, res.stderr)
	assert.Contains(t, res.stderr, "approved by tenant_token:"+approverID)
	assert.Contains(t, res.out, "session "+pendingID+" active")
	assert.Contains(t, ctl("support", "ping", "--session", pendingID), "pong")
	assert.Contains(t, ctl("support", "deactivate", pendingID), "deactivated")
	ctl("tenant", "approval", "set", "acme", "--mode", "off")

	// Rotating the signing key under the running nodes (they share its
	// directory): the agent follows the key change and the retirement,
	// and trusting the new key alone, still takes a session and a command.
	newKey := clusterKeyCLI(t, c, "rotate")
	testenv.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(clusterKeyCLI(t, c, "status"), "agents holding the live key set: 1 of 1")
	}, "the agent holds the new key set")
	oldKey := clusterKeyCLI(t, c, "retire")
	require.NotEqual(t, newKey, oldKey)
	testenv.Eventually(t, 15*time.Second, func() bool {
		live, retired := agentKeys(t, state)
		return len(live) == 1 && live[0] == newKey && len(retired) == 1 && retired[0] == oldKey
	}, "the agent follows the retirement")
	sess = activate()
	assert.Contains(t, ctl("support", "ping", "--session", sess.ID), "pong")
	assert.Contains(t, ctl("support", "deactivate", sess.ID), "deactivated")

	// Disarm: no session opens after it, whichever node is asked.
	ctl("tenant", "disarm", "acme", "--reason", "INC-2231 closed")
	_, stderr, err = run("support", "activate", "--tenant", "acme", "--agent", agentID, "--reason", "INC-2233", "--ttl", "15m")
	require.Error(t, err, "activation on a disarmed tenant")
	assert.Contains(t, stderr, "not_armed")

	// Proving the audit: through a node, and directly on the database.
	assert.Contains(t, ctl("audit", "verify", "--since", "1h"), " 0 mismatches")
	out, stderr, err = testenv.Run(t, c.Env().Vars(), "argus-server", "audit", "reconcile", "--since", "1h")
	require.NoError(t, err, "reconcile: %s\n%s", out, stderr)

	// The audit to the SIEM: every seq of the whole walkthrough, written
	// through every node, in order, duplicates aside.
	var head int64
	db, err := pgxpool.New(context.Background(), c.DatabaseURL)
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.QueryRow(context.Background(), "SELECT max(seq) FROM events").Scan(&head))
	testenv.Eventually(t, 15*time.Second, func() bool {
		seqs := rs.seqs()
		return len(seqs) > 0 && seqs[len(seqs)-1] >= head
	}, "the SIEM has the walkthrough's audit")
	var max int64
	for i, s := range rs.seqs() {
		require.LessOrEqual(t, s, max+1, "line %d: seq %d after %d is a gap", i, s, max)
		if s > max {
			max = s
		}
	}

	for _, nd := range c.Nodes {
		assert.Positive(t, r.calls[nd.ID], "%s answered some of the calls", nd.ID)
	}
	t.Logf("calls per node: %v; wall-clock %v", r.calls, time.Since(began).Round(time.Second))
}
