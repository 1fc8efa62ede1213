package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// agentKeys reads an agent's trusted control-plane keys from its state
// directory: the ids of its live and retired keys.
func agentKeys(t *testing.T, dir string) (live, retired []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "signing-keys.json"))
	if err != nil {
		return nil, nil
	}
	var f struct {
		Keys []struct {
			ID        string     `json:"key_id"`
			RetiredAt *time.Time `json:"retired_at"`
		} `json:"keys"`
	}
	require.NoError(t, json.Unmarshal(b, &f))
	for _, k := range f.Keys {
		if k.RetiredAt == nil {
			live = append(live, k.ID)
		} else {
			retired = append(retired, k.ID)
		}
	}
	return live, retired
}

// accepted counts the audited acceptances of a key set by one agent, in
// both trails.
func (s *supportEnv) accepted(t *testing.T, agentID, newest, oldest string) (int, int) {
	t.Helper()
	ctx := context.Background()
	var logs, events int
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'signing_key.accept'
		AND agent_id = $1 AND detail->>'newest_key_id' = $2 AND detail->>'oldest_key_id' = $3 AND outcome = 'success'`,
		agentID, newest, oldest).Scan(&logs))
	require.NoError(t, s.srv.Database().Pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'signing_key.accept'
		AND payload->>'agent_id' = $1 AND payload->'detail'->>'newest_key_id' = $2 AND payload->'detail'->>'oldest_key_id' = $3`,
		agentID, newest, oldest).Scan(&events))
	return logs, events
}

func (s *supportEnv) auditCount(t *testing.T, action, agentID string) int {
	t.Helper()
	var n int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM audit_log WHERE action = $1 AND ($2 = '' OR agent_id::text = $2)`, action, agentID).Scan(&n))
	return n
}

func signingKeyCLI(t *testing.T, s *supportEnv, verb string, args ...string) string {
	t.Helper()
	out, stderr, err := testenv.Run(t, s.env.Vars(), "argus-server", append([]string{"signing-key", verb}, args...)...)
	require.NoError(t, err, stderr)
	return out
}

// The rotation end to end, with the real argus-server and argus-agent
// binaries: three agents online and one offline while the key rotates;
// the three follow at once and the fourth as it reconnects; each step is
// audited. After the retirement every agent trusts only the new key, runs
// commands the server signs with it (and only with it), refuses a
// command signed with the old key, and refuses key changes and
// retirements signed by anything else, even when the control plane's own
// broker identity publishes them. An agent restarted afterwards reads its
// key set (0600) back.
func TestSigningKey_RotateWithAnAgentOfflineThenRetire(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	oldKey := s.key
	oldID := topics.KeyID(oldKey.Public().(ed25519.PublicKey))

	// Every command the control plane publishes, as published.
	var mu sync.Mutex
	var published [][]byte
	require.NoError(t, s.srv.Broker().Server().Subscribe(topics.AgentFilter(topics.Commands), 93, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		mu.Lock()
		published = append(published, append([]byte(nil), pk.Payload...))
		mu.Unlock()
	}))

	type edge struct {
		id, dir string
		proc    *testenv.AgentProcess
	}
	edges := make([]*edge, 4)
	for i := range edges {
		id, dir, proc := s.runAgent(t, fmt.Sprintf("edge-%d", i))
		edges[i] = &edge{id, dir, proc}
	}
	offline := edges[3]
	offline.proc.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return !s.online(offline.id) }, "fourth agent offline")

	newID := strings.TrimSpace(signingKeyCLI(t, s, "rotate"))
	rotated := time.Now()
	require.Regexp(t, "^[0-9a-f]{32}$", newID)
	require.NotEqual(t, oldID, newID)
	assert.Equal(t, 1, s.auditCount(t, "signing_key.rotate", ""))

	// The three online agents follow the key change without the server
	// restarting; the acceptance is audited once each, in both trails.
	for _, e := range edges[:3] {
		testenv.Eventually(t, 10*time.Second, func() bool {
			l, ev := s.accepted(t, e.id, newID, oldID)
			return l == 1 && ev == 1
		}, "agent accepted the new key")
		live, _ := agentKeys(t, e.dir)
		assert.ElementsMatch(t, []string{oldID, newID}, live, "both keys trusted until retirement")
		assert.Equal(t, 1, s.auditCount(t, "signing_key.publish", e.id))
	}
	t.Logf("three online agents accepted the new key %v after rotate returned", time.Since(rotated).Round(time.Millisecond))
	live, _ := agentKeys(t, offline.dir)
	assert.Empty(t, live, "the offline agent has heard of nothing")
	assert.Zero(t, s.auditCount(t, "signing_key.publish", offline.id))

	// The offline agent gets the chain as it connects.
	offline.proc = testenv.StartAgent(t, offline.dir)
	testenv.Eventually(t, 15*time.Second, func() bool {
		l, ev := s.accepted(t, offline.id, newID, oldID)
		return l == 1 && ev == 1
	}, "reconnected agent accepted the new key")
	assert.Equal(t, 1, s.auditCount(t, "signing_key.publish", offline.id))
	status := signingKeyCLI(t, s, "status")
	assert.Contains(t, status, "agents holding the live key set: 4 of 4", status)

	retired := strings.Fields(signingKeyCLI(t, s, "retire"))
	assert.Equal(t, []string{oldID}, retired)
	for _, e := range edges {
		testenv.Eventually(t, 15*time.Second, func() bool {
			l, ev := s.accepted(t, e.id, newID, newID)
			return l == 1 && ev == 1
		}, "agent accepted the retirement")
		live, ret := agentKeys(t, e.dir)
		assert.Equal(t, []string{newID}, live)
		assert.Equal(t, []string{oldID}, ret)
		fi, err := os.Stat(filepath.Join(e.dir, "signing-keys.json"))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the agent's key file is private")
	}
	assert.Equal(t, 1, s.auditCount(t, "signing_key.retire", ""))
	_, err := os.Stat(filepath.Join(s.env.DataDir, "command-signing.key"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the retired private key is gone from the server")

	// An agent restarted now reads its key set back: the server sends it
	// nothing (it confirmed the set), and its activation, signed with the
	// new key only, is applied.
	edges[0].proc.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return !s.online(edges[0].id) }, "first agent offline")
	edges[0].proc = testenv.StartAgent(t, edges[0].dir)
	edges[0].proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return s.online(edges[0].id) }, "first agent back")
	live, _ = agentKeys(t, edges[0].dir)
	assert.Equal(t, []string{newID}, live, "the key set survived the restart")

	// Every agent runs commands; every command the server publishes is
	// signed by the new key and not by the old one.
	sessions, tokens := make([]string, len(edges)), make([]string, len(edges))
	for i, e := range edges {
		sess, token := s.activate(t, e.id, "")
		sessions[i], tokens[i] = sess.ID, token
		res, err := s.command(t, sess.ID, token, "ping")
		require.NoError(t, err)
		assert.Equal(t, topics.ResultOK, res.Status, "agent %d runs a command signed by the new key", i)
	}
	assert.Equal(t, 2, s.auditCount(t, "signing_key.publish", edges[0].id), "nothing resent after the restart")
	assert.NotContains(t, edges[0].proc.Logs(), "signing keys changed",
		"the restarted agent needed no key change")
	mu.Lock()
	got := append([][]byte(nil), published...)
	mu.Unlock()
	require.Len(t, got, len(edges))
	newPub := s.srv.SigningKeys().Public()
	require.Equal(t, newID, topics.KeyID(newPub))
	for _, p := range got {
		var c topics.CommandMsg
		assert.NoError(t, topics.Open(newPub, topics.PurposeCommand, p, 1<<20, &c))
		assert.ErrorIs(t, topics.Open(oldKey.Public().(ed25519.PublicKey), topics.PurposeCommand, p, 1<<20, &c), topics.ErrBadSignature)
	}

	// A command signed with the retired key, for the live session, is
	// refused by the agent itself.
	target := edges[1]
	tid, err := topics.ParseAgentID(target.id)
	require.NoError(t, err)
	sess := s.session(t, sessions[1])
	cmd := topics.CommandMsg{V: topics.Version, ID: uuid.NewString(), SessionID: sess.ID, TenantID: sess.TenantID, AgentID: target.id,
		Name: "ping", IssuedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Minute).UTC()}
	old, err := topics.Sign(oldKey, topics.PurposeCommand, cmd)
	require.NoError(t, err)
	require.Zero(t, s.refusals(target.id, "bad_signature"))
	require.NoError(t, s.srv.Broker().Publish(tid.Topic(topics.Commands), old, false, 1, nil))
	testenv.Eventually(t, 10*time.Second, func() bool { return s.refusals(target.id, "bad_signature") == 1 }, "the retired key is refused")

	// Forged key changes, published with the control plane's own broker
	// identity: a new key signed by a stranger claiming the current key,
	// a retirement of the current key by the stranger, and the retired
	// key introducing a key of its own.
	evilPub, evilPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	evilID := topics.KeyID(evilPub)
	forgedLink, err := topics.Sign(evilPriv, topics.PurposeKeyChange, topics.KeyLink{V: 1, Seq: 2, KeyID: evilID,
		PublicKey: topics.EncodePublicKey(evilPub), PrevKeyID: newID, IssuedAt: time.Now().UTC().Format(time.RFC3339)})
	require.NoError(t, err)
	forgedRetire, err := topics.Sign(evilPriv, topics.PurposeKeyRetire, topics.KeyRetirement{V: 1, KeyID: newID, ByKeyID: newID})
	require.NoError(t, err)
	retiredLink, err := topics.Sign(oldKey, topics.PurposeKeyChange, topics.KeyLink{V: 1, Seq: 2, KeyID: evilID,
		PublicKey: topics.EncodePublicKey(evilPub), PrevKeyID: oldID, IssuedAt: time.Now().UTC().Format(time.RFC3339)})
	require.NoError(t, err)
	mark := target.proc.LineCount()
	for _, c := range []topics.KeyChainMsg{
		{V: 1, Kind: topics.KindKeyChain, Links: []json.RawMessage{forgedLink}},
		{V: 1, Kind: topics.KindKeyChain, Links: []json.RawMessage{}, Retirements: []json.RawMessage{forgedRetire}},
		{V: 1, Kind: topics.KindKeyChain, Links: []json.RawMessage{retiredLink}},
	} {
		b, err := json.Marshal(c)
		require.NoError(t, err)
		require.NoError(t, s.srv.Broker().Publish(tid.Topic(topics.Activation), b, false, 1, nil))
	}
	target.proc.WaitLog(t, mark, "refusing key change", 3, 10*time.Second)
	live, ret := agentKeys(t, target.dir)
	assert.Equal(t, []string{newID}, live, "no forged key was taken")
	assert.Equal(t, []string{oldID}, ret)

	// A command signed by the stranger's key is refused; the real key
	// still works.
	cmd.ID = uuid.NewString()
	forged, err := topics.Sign(evilPriv, topics.PurposeCommand, cmd)
	require.NoError(t, err)
	require.NoError(t, s.srv.Broker().Publish(tid.Topic(topics.Commands), forged, false, 1, nil))
	testenv.Eventually(t, 10*time.Second, func() bool { return s.refusals(target.id, "bad_signature") == 2 }, "the stranger's key is refused")
	ok, err := s.command(t, sessions[1], tokens[1], "ping")
	require.NoError(t, err)
	assert.Equal(t, topics.ResultOK, ok.Status, "the agent still runs what the current key signs")
}

// refusals counts the agent's refusals of commands it could not verify.
// Such a refusal names no command: nothing in the command can be trusted.
func (s *supportEnv) refusals(agentID, code string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.res {
		if r.AgentID == agentID && r.Status == topics.ResultRefused && r.Error != nil && r.Error.Code == code {
			n++
		}
	}
	return n
}

// The signing-key commands refuse a data directory without an ARGUS
// database as the other direct-database commands do, and make no key
// there.
func TestSigningKey_SubcommandsRefuseADataDirWithoutAnArgusDatabase(t *testing.T) {
	parent := testenv.TempDir(t)
	empty := filepath.Join(parent, "empty")
	require.NoError(t, os.Mkdir(empty, 0o700))
	for _, dir := range []string{filepath.Join(parent, "typo"), empty} {
		for _, verb := range []string{"rotate", "status", "retire"} {
			out, stderr, err := testenv.Run(t, []string{"ARGUS_DATABASE_URL="}, "argus-server", "signing-key", verb, "--data-dir", dir)
			assert.Equal(t, 1, exitCode(err), "%s on %s: %s%s", verb, dir, out, stderr)
			assert.Contains(t, stderr, "no ARGUS database in "+dir+": start `argus-server serve --data-dir "+dir+"` once, or set ARGUS_DATABASE_URL", verb)
			assert.Empty(t, out)
			assert.NoFileExists(t, filepath.Join(dir, "command-signing.key"), "%s made no key", verb)
		}
	}
	assert.NoDirExists(t, filepath.Join(parent, "typo"), "a mistyped data dir is not created")
}

// Before any rotation, status shows the one key every agent enrolled
// with; retire refuses (nothing to retire) with exit 1, and the refusal
// is audited.
func TestSigningKey_StatusAndRetireBeforeAnyRotation(t *testing.T) {
	s := newSupportEnv(t, nil)
	id := topics.KeyID(s.key.Public().(ed25519.PublicKey))
	var st struct {
		Keys []struct {
			ID    string `json:"key_id"`
			State string `json:"state"`
		} `json:"keys"`
		Agents    int `json:"agents"`
		Confirmed int `json:"confirmed"`
	}
	require.NoError(t, json.Unmarshal([]byte(signingKeyCLI(t, s, "status", "--json")), &st))
	require.Len(t, st.Keys, 1)
	assert.Equal(t, id, st.Keys[0].ID)
	assert.Equal(t, "current", st.Keys[0].State)

	out, stderr, err := testenv.Run(t, s.env.Vars(), "argus-server", "signing-key", "retire")
	assert.Equal(t, 1, exitCode(err), out+stderr)
	assert.Contains(t, stderr, "no key to retire")
	assert.Empty(t, out)
	var denied int
	require.NoError(t, s.srv.Database().Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM audit_log WHERE action = 'signing_key.retire' AND outcome = 'denied'`).Scan(&denied))
	assert.Equal(t, 1, denied)
	assert.FileExists(t, filepath.Join(s.env.DataDir, "command-signing.key"))
}

// The same rotation with every program a real binary, the server
// included: the running server picks up `rotate` and `retire` without a
// restart, the agent follows both, argusctl's commands still run, and no
// private key appears in any log.
func TestSigningKey_RotateAndRetireUnderTheRealServer(t *testing.T) {
	env := testenv.NewEnv(t)
	srv := env.StartServer(t, []string{"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.0/8", "ARGUS_OPS_TOKEN=" + opsToken})
	token := env.Operator(t, "admin", "operator:admin", "tenant:admin", "tenant:arm", "agent:admin", "remote_support")
	cfgDir := t.TempDir()
	ctl := func(args ...string) string {
		t.Helper()
		out, stderr, err := testenv.Run(t, []string{"ARGUSCTL_SERVER=" + srv.APIURL, "ARGUSCTL_TOKEN=" + token, "ARGUSCTL_OPS_TOKEN=" + opsToken,
			"ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + cfgDir}, "argusctl", args...)
		require.NoError(t, err, "argusctl %v\n%s", args, stderr)
		return out
	}
	keyCLI := func(verb string) string {
		t.Helper()
		out, stderr, err := testenv.Run(t, env.Vars(), "argus-server", "signing-key", verb)
		require.NoError(t, err, stderr)
		return out
	}
	ctl("tenant", "create", "acme")
	enr := ctl("agent", "enroll", "--tenant", "acme", "--name", "cam-gw-1")
	state := filepath.Join(t.TempDir(), "agent-state")
	out, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", srv.APIURL, "--token", enr, "--state-dir", state)
	require.NoError(t, err, stderr)
	agentID := strings.Fields(strings.TrimPrefix(out, "enrolled as agent "))[0]
	agentProc := testenv.StartAgent(t, state)
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(ctl("agent", "list", "--tenant", "acme"), "yes") }, "agent online")
	ctl("tenant", "consent", "record", "acme", "--document-id", "DOC-1", "--signed-by", "Jane Roe", "--signed-at", "2026-11-20")
	ctl("tenant", "arm", "acme", "--reason", "INC-1")

	var st struct {
		Keys []struct {
			ID string `json:"key_id"`
		} `json:"keys"`
	}
	out, stderr, err = testenv.Run(t, env.Vars(), "argus-server", "signing-key", "status", "--json")
	require.NoError(t, err, stderr)
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Len(t, st.Keys, 1)
	oldID := st.Keys[0].ID
	newID := strings.TrimSpace(keyCLI("rotate"))
	testenv.Eventually(t, 10*time.Second, func() bool {
		live, _ := agentKeys(t, state)
		return len(live) == 2 && live[1] == newID
	}, "agent follows the rotation")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(keyCLI("status"), "agents holding the live key set: 1 of 1")
	}, "the server records the agent's acceptance")
	assert.Equal(t, oldID, strings.TrimSpace(keyCLI("retire")))
	testenv.Eventually(t, 10*time.Second, func() bool {
		live, retired := agentKeys(t, state)
		return len(live) == 1 && live[0] == newID && len(retired) == 1 && retired[0] == oldID
	}, "agent follows the retirement")

	var sess apiclient.Session
	require.NoError(t, json.Unmarshal([]byte(ctl("support", "activate", "--tenant", "acme", "--agent", agentID, "--reason", "INC-1", "-o", "json")), &sess))
	assert.Contains(t, ctl("support", "ping", "--session", sess.ID), "pong")
	assert.Contains(t, srv.Logs(), "signing key set changed")

	pemBytes, err := os.ReadFile(filepath.Join(env.DataDir, "command-signing-"+newID+".key"))
	require.NoError(t, err)
	body := strings.Join(strings.Split(strings.TrimSpace(string(pemBytes)), "\n")[1:2], "")
	require.NotEmpty(t, body)
	for name, logs := range map[string]string{"server": srv.Logs(), "agent": agentProc.Logs()} {
		assert.NotContains(t, logs, body, "no private key in the %s's log", name)
	}
}
