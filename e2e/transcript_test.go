package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/transcript"
	"github.com/argus-remote/argus/internal/testenv"
)

// TestTranscript_RealSessionVerifiesOfflineAndEveryTamperingIsNamed runs
// two tenants' sessions at once with the real binaries, downloads one
// session's transcript with argusctl, and checks it with argusctl against
// the key from the API and the key the tenant's own agent pinned. The
// other tenant's concurrent actions are inside its span and show nothing
// of themselves; a flipped byte, a dropped action and another key's
// signature each fail, naming the seq and what is wrong.
func TestTranscript_RealSessionVerifiesOfflineAndEveryTamperingIsNamed(t *testing.T) {
	env := testenv.NewEnv(t)
	srv := env.StartServer(t, []string{"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.0/8", "ARGUS_OPS_TOKEN=" + opsToken})
	token := env.Operator(t, "admin")
	cfgDir := t.TempDir()
	run := func(args ...string) (string, string, error) {
		t.Helper()
		cmdEnv := []string{"ARGUSCTL_SERVER=" + srv.APIURL, "ARGUSCTL_TOKEN=" + token, "ARGUSCTL_OPS_TOKEN=" + opsToken,
			"ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + cfgDir}
		return testenv.Run(t, cmdEnv, "argusctl", args...)
	}
	ctl := func(args ...string) string {
		t.Helper()
		out, stderr, err := run(args...)
		require.NoError(t, err, "argusctl %v\n%s", args, stderr)
		return out
	}
	h := newHostFixture(t)
	type tenantRun struct {
		agentID, stateDir string
		sess              apiclient.Session
	}
	start := func(tenant string) tenantRun {
		ctl("tenant", "create", tenant)
		enr := ctl("agent", "enroll", "--tenant", tenant, "--name", "cam-gw-1")
		state := filepath.Join(t.TempDir(), tenant+"-agent")
		out, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", srv.APIURL, "--token", enr, "--state-dir", state)
		require.NoError(t, err, stderr)
		id := strings.Fields(strings.TrimPrefix(out, "enrolled as agent "))[0]
		testenv.StartAgent(t, state, "ARGUS_AGENT_CONFIG="+h.config)
		testenv.Eventually(t, 10*time.Second, func() bool {
			return strings.Contains(ctl("agent", "list", "--tenant", tenant), "yes")
		}, tenant+" agent online")
		ctl("tenant", "consent", "record", tenant, "--document-id", "DOC-"+tenant, "--signed-by", "Jane Roe", "--signed-at", "2026-11-20")
		ctl("tenant", "arm", tenant, "--reason", "INC-1 "+tenant)
		var sess apiclient.Session
		require.NoError(t, json.Unmarshal([]byte(ctl("support", "activate", "--tenant", tenant, "--agent", id,
			"--reason", "INC-1 secret-of-"+tenant, "-o", "json")), &sess))
		return tenantRun{agentID: id, stateDir: state, sess: sess}
	}
	acme, globex := start("acme"), start("globex")

	// Both sessions work at the same time: globex's actions land between
	// acme's in the one chain.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 3 {
			ctl("support", "ping", "--session", globex.sess.ID)
			ctl("support", "tail-log", "--session", globex.sess.ID, "--log", "streamer", "--lines", "2")
		}
	}()
	go func() {
		defer wg.Done()
		ctl("support", "ping", "--session", acme.sess.ID)
		ctl("support", "info", "--session", acme.sess.ID)
		ctl("support", "tail-log", "--session", acme.sess.ID, "--log", "streamer", "--lines", "1")
		ctl("support", "read-file", "--session", acme.sess.ID, filepath.Join(h.root, "config.yaml"), "--out", filepath.Join(t.TempDir(), "c.yaml"))
		ctl("support", "capabilities", "--session", acme.sess.ID)
	}()
	wg.Wait()
	ctl("support", "deactivate", acme.sess.ID)
	ctl("support", "deactivate", globex.sess.ID)

	dir := t.TempDir()
	file := filepath.Join(dir, "acme.transcript.json")
	_, stderr, err := run("support", "transcript", acme.sess.ID, "--out", file)
	require.NoError(t, err, stderr)
	assert.Contains(t, stderr, "written to "+file)
	keyFile := filepath.Join(dir, "control-plane.pub")
	ctl("audit", "signing-key", "--out", keyFile)

	out := ctl("audit", "verify-transcript", file, "--key", keyFile)
	assert.Contains(t, out, "verified: signed by key ")

	// The key need not come from the server: the tenant's own agent
	// pinned it at enrollment.
	st, err := agent.LoadState(acme.stateDir)
	require.NoError(t, err)
	pinned := filepath.Join(dir, "pinned.pub")
	require.NoError(t, os.WriteFile(pinned, []byte(st.SigningPublicKey+"\n"), 0o644))
	assert.Contains(t, ctl("audit", "verify-transcript", file, "--key", pinned), "verified")
	key, err := signing.LoadOrCreate(filepath.Join(env.DataDir, "command-signing.key"))
	require.NoError(t, err)
	assert.Contains(t, out, signing.KeyID(key.Public().(ed25519.PublicKey)), "signed by the control plane's key")

	data, err := os.ReadFile(file)
	require.NoError(t, err)
	tr, err := transcript.Parse(data)
	require.NoError(t, err)
	var actions []string
	var own []int
	for i, e := range tr.Entries {
		if !e.Own() {
			continue
		}
		own = append(own, i)
		var ev audit.Event
		require.NoError(t, json.Unmarshal(e.Event, &ev))
		assert.Equal(t, acme.sess.ID, ev.SessionID)
		actions = append(actions, ev.Action)
	}
	assert.Equal(t, "support.activate", actions[0])
	assert.Equal(t, "support.session.end", actions[len(actions)-1])
	for _, a := range []string{"support.command.requested", "support.command.completed"} {
		assert.GreaterOrEqual(t, countOf(actions, a), 5, "every command of the session is there: %s", a)
	}
	assert.Greater(t, len(tr.Entries), tr.Actions, "globex's concurrent actions are inside the span")
	for _, leak := range []string{globex.sess.ID, globex.agentID, "globex", "secret-of-globex", globex.sess.TenantID} {
		assert.NotContains(t, string(data), leak, "nothing of the other tenant is in the transcript")
	}

	verifyFails := func(name string, tr *transcript.Transcript, keyPath string, want ...string) {
		t.Helper()
		b, err := json.MarshalIndent(tr, "", "  ")
		require.NoError(t, err)
		p := filepath.Join(dir, name+".json")
		require.NoError(t, os.WriteFile(p, b, 0o600))
		out, stderr, err := run("audit", "verify-transcript", p, "--key", keyPath)
		require.Error(t, err, "%s must not verify:\n%s", name, out)
		assert.Contains(t, stderr, "the transcript does not verify")
		for _, w := range want {
			assert.Contains(t, out, w, name)
		}
	}
	fresh := func() *transcript.Transcript {
		t.Helper()
		tr, err := transcript.Parse(data)
		require.NoError(t, err)
		return tr
	}

	// One byte of one action flipped.
	flipped := fresh()
	mid := &flipped.Entries[own[len(own)/2]]
	c, err := base64.StdEncoding.DecodeString(mid.Canonical)
	require.NoError(t, err)
	at := strings.Index(string(c), `"outcome":"`) + len(`"outcome":"`)
	c[at] ^= 0x01
	mid.Canonical = base64.StdEncoding.EncodeToString(c)
	verifyFails("flipped", flipped, keyFile, seqLabel(mid.Seq)+"hash is not SHA-256(prev_hash || canonical)")

	// One action dropped.
	dropped := fresh()
	gone := dropped.Entries[own[1]].Seq
	dropped.Entries = append(dropped.Entries[:own[1]], dropped.Entries[own[1]+1:]...)
	verifyFails("dropped", dropped, keyFile, seqLabel(gone)+"missing", "signature does not verify",
		seqLabel(gone+1)+"prev_hash does not equal the hash of seq")

	// Re-signed with another key, and checked with the real one.
	_, other, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	resigned := fresh()
	require.NoError(t, transcript.Sign(resigned, other))
	verifyFails("resigned", resigned, keyFile, "signed by key "+signing.KeyID(other.Public().(ed25519.PublicKey))+
		", not by the key given ("+signing.KeyID(key.Public().(ed25519.PublicKey))+")")

	// The real transcript checked with some other key.
	otherKey := filepath.Join(dir, "other.pub")
	require.NoError(t, os.WriteFile(otherKey, transcript.PublicKeyPEM(other.Public().(ed25519.PublicKey)), 0o644))
	_, _, err = run("audit", "verify-transcript", file, "--key", otherKey)
	assert.Error(t, err)
}

func seqLabel(seq int64) string { return "seq " + strconv.FormatInt(seq, 10) + ": " }

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// TestTranscript_EndpointsRefuseWithStableCodesAndAuditEachRefusal: bad
// ids, another tenant's session, a revoked or unknown viewer token, an
// operator without audit:read; the public key needs no credential.
func TestTranscript_EndpointsRefuseWithStableCodesAndAuditEachRefusal(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	_, act := s.activeFake(t, "cam-gw-1")
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "globex"}, nil))
	var acmeViewer, globexViewer struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{}, &acmeViewer))
	require.NoError(t, s.do(t, "POST", "/v1/tenants/globex/viewer-tokens", map[string]string{}, &globexViewer))

	get := func(path, bearer string) (int, string, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), "GET", s.srv.APIURL()+path, nil)
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var doc struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		_ = json.Unmarshal(b, &doc)
		return resp.StatusCode, doc.Error.Code, b
	}
	viewerPath := "/v1/viewer/sessions/" + act.session.ID + "/transcript"

	// The tenant's own token gets the transcript, and it verifies.
	status, _, body := get(viewerPath, acmeViewer.Token)
	require.Equal(t, http.StatusOK, status, string(body))
	tr, err := transcript.Parse(body)
	require.NoError(t, err)
	var keyInfo struct {
		KeyID string `json:"key_id"`
		PEM   string `json:"pem"`
	}
	status, _, kb := get("/v1/signing-key", "")
	require.Equal(t, http.StatusOK, status, "the public key needs no credential")
	require.NoError(t, json.Unmarshal(kb, &keyInfo))
	pub, err := transcript.ParsePublicKey([]byte(keyInfo.PEM))
	require.NoError(t, err)
	assert.Equal(t, s.key.Public(), pub)
	assert.Empty(t, transcript.Verify(tr, pub))
	assert.Equal(t, act.session.ID, tr.Session.ID)

	_, noAudit, err := operators.NewStore(s.srv.Database().Pool).Create(context.Background(), "bob",
		operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor, operators.ScopeRemoteSupport}})
	require.NoError(t, err)

	cases := []struct {
		name, path, bearer string
		status             int
		code               string
	}{
		{"another tenant's session", viewerPath, globexViewer.Token, http.StatusNotFound, "not_found"},
		{"a session that does not exist", "/v1/viewer/sessions/00000000-0000-4000-8000-000000000000/transcript", acmeViewer.Token, http.StatusNotFound, "not_found"},
		{"a bad session id", "/v1/viewer/sessions/not-a-uuid/transcript", acmeViewer.Token, http.StatusBadRequest, "bad_request"},
		{"an over-long session id", "/v1/viewer/sessions/" + strings.Repeat("a", 4000) + "/transcript", acmeViewer.Token, http.StatusBadRequest, "bad_request"},
		{"no token", viewerPath, "", http.StatusUnauthorized, "unauthenticated"},
		{"an unknown token", viewerPath, "argus_vwr_0123456789abcdef_" + strings.Repeat("0", 64), http.StatusUnauthorized, "invalid_token"},
		{"an operator token on the viewer route", viewerPath, s.api.Token, http.StatusUnauthorized, "invalid_token"},
		{"a viewer token on the operator route", "/v1/sessions/" + act.session.ID + "/transcript", acmeViewer.Token, http.StatusUnauthorized, "invalid_token"},
		{"an operator without audit:read", "/v1/sessions/" + act.session.ID + "/transcript", noAudit, http.StatusForbidden, "forbidden"},
		{"an operator, a bad id", "/v1/sessions/x'--/transcript", s.api.Token, http.StatusBadRequest, "bad_request"},
		{"an operator, no such session", "/v1/sessions/00000000-0000-4000-8000-000000000000/transcript", s.api.Token, http.StatusNotFound, "session_not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := s.transcriptDenials(t, c.code)
			status, code, body := get(c.path, c.bearer)
			assert.Equal(t, c.status, status, string(body))
			assert.Equal(t, c.code, code, string(body))
			assert.Equal(t, before+1, s.transcriptDenials(t, c.code), "the refusal is audited in both trails")
		})
	}

	// Revoked: the token that worked a moment ago is refused, and audited
	// under its id.
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens/"+acmeViewer.ID+"/revoke", nil, nil))
	status, code, _ := get(viewerPath, acmeViewer.Token)
	assert.Equal(t, http.StatusUnauthorized, status)
	assert.Equal(t, "invalid_token", code)
	var n int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
		WHERE action = 'transcript.download' AND outcome = 'denied' AND detail->>'viewer_token' = $1`, acmeViewer.ID).Scan(&n))
	assert.Equal(t, 1, n, "the revoked token's refusal names it")

	// The refusal of globex's token names no session of acme as its own:
	// acme's transcript shows no other tenant's attempt.
	status, _, body = get("/v1/sessions/"+act.session.ID+"/transcript", s.api.Token)
	require.Equal(t, http.StatusOK, status)
	assert.NotContains(t, string(body), globexViewer.ID)
	var ok int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
		WHERE action = 'transcript.download' AND outcome = 'success' AND session_id IS NULL AND detail->>'session' = $1`, act.session.ID).Scan(&ok))
	assert.Equal(t, 2, ok, "each download is audited, outside the session's span")
}

// transcriptDenials counts refused transcript downloads with code, in
// audit_log and events alike.
func (s *supportEnv) transcriptDenials(t *testing.T, code string) int {
	t.Helper()
	a, e := s.deniedWith(t, "transcript.download", code)
	require.Equal(t, a, e, "both trails")
	return a
}
