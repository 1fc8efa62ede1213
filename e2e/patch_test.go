package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/patch"
	"github.com/argus-remote/argus/topics"
)

// snapshot lists every file under dir with its mode and digest.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", strings.TrimPrefix(p, dir), fi.Mode())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += " " + hex.EncodeToString(sum[:8])
		}
		lines = append(lines, line)
		return nil
	}))
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

type patchEnv struct {
	*supportEnv
	root, healthMarker string
	key, otherKey      ed25519.PrivateKey
	sessionID, token   string
	agentID, stateDir  string
	config             string
	proc               *testenv.AgentProcess
}

// newPatchEnv runs an agent with patch roots, keys and a health check, in
// an active session; extraEnv goes to the agent.
func newPatchEnv(t *testing.T, extraEnv ...string) *patchEnv {
	t.Helper()
	dir := t.TempDir()
	p := &patchEnv{root: filepath.Join(dir, "streamer"), healthMarker: filepath.Join(dir, "unhealthy")}
	require.NoError(t, os.MkdirAll(filepath.Join(p.root, "bin"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(p.root, "etc", "busy.conf"), 0o755)) // a directory where a file will be aimed
	require.NoError(t, os.WriteFile(filepath.Join(p.root, "bin", "run.sh"), []byte("#!/bin/sh\necho v1\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(p.root, "etc", "app.conf"), []byte("level=1\n"), 0o644))

	pub, key, _ := ed25519.GenerateKey(nil)
	_, other, _ := ed25519.GenerateKey(nil)
	p.key, p.otherKey = key, other
	pubFile := filepath.Join(dir, "patch-signing.pub")
	require.NoError(t, os.WriteFile(pubFile, []byte(patch.EncodePublic(pub)+"\n"), 0o644))
	config := filepath.Join(dir, "agent.yaml")
	p.config = config
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf(`patch-keys: [%s]
patch-roots:
  streamer: %s
patch-health-check: [/bin/sh, -c, "test ! -e %s"]
patch-health-timeout: 10s
`, pubFile, p.root, p.healthMarker)), 0o600))

	p.supportEnv = newSupportEnv(t, nil)
	p.consentAndArm(t)
	p.agentID, p.stateDir, p.proc = p.runConfiguredAgent(t, "cam-gw-1", config, extraEnv...)
	sess, token := p.activate(t, p.agentID, "")
	p.sessionID, p.token = sess.ID, token
	return p
}

func (p *patchEnv) bundle(t *testing.T, key ed25519.PrivateKey, m patch.Manifest, contents map[string][]byte) []byte {
	t.Helper()
	if m.Root == "" {
		m.Root = "streamer"
	}
	b, err := patch.Build(m, contents, key)
	require.NoError(t, err)
	return b
}

// send posts a bundle and returns the outcome code ("ok" on success).
func (p *patchEnv) send(t *testing.T, bundle []byte) (string, json.RawMessage) {
	t.Helper()
	return p.sendCtx(context.Background(), bundle)
}

func (p *patchEnv) sendCtx(ctx context.Context, bundle []byte) (string, json.RawMessage) {
	c := *p.api
	c.SessionToken = p.token
	var res struct {
		Status string `json:"status"`
		Error  *struct {
			Code string `json:"code"`
		} `json:"error"`
		Data json.RawMessage `json:"data"`
	}
	err := c.DoRaw(ctx, "POST", "/v1/support/sessions/"+p.sessionID+"/patch", "application/octet-stream", bundle, &res)
	if err != nil {
		return apiCode(err), nil
	}
	if res.Error != nil {
		return res.Error.Code, nil
	}
	return res.Status, res.Data
}

// craft signs an arbitrary manifest, for bundles Build would refuse.
func craft(t *testing.T, key ed25519.PrivateKey, manifest map[string]any, files map[string][]byte) []byte {
	t.Helper()
	mb, err := json.Marshal(manifest)
	require.NoError(t, err)
	b, err := json.Marshal(map[string]any{
		"v": 1, "key_id": patch.KeyID(key.Public().(ed25519.PublicKey)), "manifest": mb,
		"signature": ed25519.Sign(key, append([]byte("argus/v1/patch\x00"), mb...)), "files": files,
	})
	require.NoError(t, err)
	return b
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestPatch_AppliesAndRefusesWithoutTouchingDisk(t *testing.T) {
	p := newPatchEnv(t)
	runV2 := []byte("#!/bin/sh\necho v2\n")
	newConf := []byte("added=yes\n")
	attempts := 0
	send := func(b []byte) (string, json.RawMessage) { attempts++; return p.send(t, b) }

	good := p.bundle(t, p.key, patch.Manifest{ID: "HF-1", Version: "1.1.0", Files: []patch.File{
		{Target: "bin/run.sh", Mode: "0755"}, {Target: "etc/new.conf", Mode: "0600"},
	}}, map[string][]byte{"bin/run.sh": runV2, "etc/new.conf": newConf})

	// Refusals first, each leaving the disk exactly as it was.
	before := snapshot(t, p.root)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(good, &raw))
	tamperFile := func() []byte {
		var m map[string]any
		require.NoError(t, json.Unmarshal(good, &m))
		m["files"].(map[string]any)["bin/run.sh"] = "IyEvYmluL3NoCmVjaG8gZXZpbAo=" // "#!/bin/sh\necho evil\n"
		b, _ := json.Marshal(m)
		return b
	}
	tamperManifest := func() []byte {
		var m map[string]any
		require.NoError(t, json.Unmarshal(good, &m))
		var man map[string]any
		mb, _ := json.Marshal(m["manifest"])
		var s string
		_ = json.Unmarshal(mb, &s)
		dec, _ := (&jsonB64{}).decode(s)
		require.NoError(t, json.Unmarshal(dec, &man))
		man["version"] = "9.9.9"
		nb, _ := json.Marshal(man)
		m["manifest"] = nb
		b, _ := json.Marshal(m)
		return b
	}
	for name, tc := range map[string]struct {
		bundle []byte
		code   string
	}{
		"tampered file":     {tamperFile(), "digest_mismatch"},
		"tampered manifest": {tamperManifest(), "bad_signature"},
		"unknown signer":    {p.bundle(t, p.otherKey, patch.Manifest{ID: "HF-X", Version: "1.1.0", Files: []patch.File{{Target: "bin/run.sh"}}}, map[string][]byte{"bin/run.sh": runV2}), "unknown_signer"},
		"expired": {p.bundle(t, p.key, patch.Manifest{ID: "HF-E", Version: "1.1.0", NotAfter: time.Now().Add(-time.Hour),
			Files: []patch.File{{Target: "bin/run.sh"}}}, map[string][]byte{"bin/run.sh": runV2}), "patch_expired"},
		"dot-dot target": {craft(t, p.key, map[string]any{"v": 1, "id": "HF-D", "version": "1.1.0", "series": "streamer", "root": "streamer",
			"created": time.Now(), "files": []map[string]any{{"target": "../escape.sh", "sha256": digest(runV2), "mode": "0755", "size": len(runV2)}}},
			map[string][]byte{"../escape.sh": runV2}), "path_not_allowed"},
		"absolute target": {craft(t, p.key, map[string]any{"v": 1, "id": "HF-A", "version": "1.1.0", "series": "streamer", "root": "streamer",
			"created": time.Now(), "files": []map[string]any{{"target": "/etc/cron.d/x", "sha256": digest(runV2), "mode": "0644", "size": len(runV2)}}},
			map[string][]byte{"/etc/cron.d/x": runV2}), "path_not_allowed"},
		"unknown root": {p.bundle(t, p.key, patch.Manifest{ID: "HF-R", Version: "1.1.0", Root: "kernel", Files: []patch.File{{Target: "x"}}},
			map[string][]byte{"x": runV2}), "path_not_allowed"},
		"halfway failure": {p.bundle(t, p.key, patch.Manifest{ID: "HF-H", Version: "1.1.0", Files: []patch.File{
			{Target: "bin/run.sh", Mode: "0755"}, {Target: "etc/busy.conf"}}}, map[string][]byte{"bin/run.sh": runV2, "etc/busy.conf": newConf}), "patch_rolled_back"},
		"not a bundle": {[]byte("#!/bin/sh\nrm -rf /\n"), "bad_bundle"},
	} {
		t.Run(name, func(t *testing.T) {
			code, _ := send(tc.bundle)
			assert.Equal(t, tc.code, code)
			assert.Equal(t, before, snapshot(t, p.root), "nothing changed on disk")
		})
	}

	// The health check fails: the patch goes in, then comes back out.
	require.NoError(t, os.WriteFile(p.healthMarker, nil, 0o644))
	code, _ := send(good)
	assert.Equal(t, "patch_rolled_back", code)
	assert.Equal(t, before, snapshot(t, p.root), "rolled back after a failing health check")
	require.NoError(t, os.Remove(p.healthMarker))

	// The valid patch applies: new content, new modes.
	code, data := send(good)
	require.Equal(t, "ok", code)
	got, err := os.ReadFile(filepath.Join(p.root, "bin", "run.sh"))
	require.NoError(t, err)
	assert.Equal(t, runV2, got)
	fi, err := os.Stat(filepath.Join(p.root, "bin", "run.sh"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	fi, err = os.Stat(filepath.Join(p.root, "etc", "new.conf"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	var res agent.PatchResult
	require.NoError(t, json.Unmarshal(data, &res))
	assert.Equal(t, "HF-1", res.ID)
	entries, _ := os.ReadDir(filepath.Join(p.root, "bin"))
	assert.Len(t, entries, 1, "no staging or backup files left behind")

	applied, err := agent.AppliedPatches(p.stateDir)
	require.NoError(t, err)
	require.Len(t, applied, 1)
	assert.Equal(t, digest(good), applied[0].Digest)

	// Replays and downgrades.
	after := snapshot(t, p.root)
	code, _ = send(good)
	assert.Equal(t, "patch_replayed", code, "the same id again")
	code, _ = send(p.bundle(t, p.key, patch.Manifest{ID: "HF-0", Version: "1.0.9", Files: []patch.File{{Target: "bin/run.sh"}}},
		map[string][]byte{"bin/run.sh": []byte("old\n")}))
	assert.Equal(t, "patch_replayed", code, "a downgrade")
	assert.Equal(t, after, snapshot(t, p.root))

	// get_capabilities lists applied patches.
	caps := p.run(t, p.sessionID, p.token, "get_capabilities", nil)
	assert.Contains(t, string(caps.Data), `"HF-1"`)

	// Every attempt is audited in both trails: the one the server refused
	// itself ("not a bundle") once, every bundle it sent twice, requested
	// before the first chunk and completed after the last answer.
	logRows, events := p.auditPair(t, "support.patch", p.sessionID)
	assert.Equal(t, 1, logRows)
	assert.Equal(t, 1, events)
	for _, action := range []string{"support.patch.requested", "support.patch.completed"} {
		logRows, events := p.auditPair(t, action, p.sessionID)
		assert.Equal(t, attempts-1, logRows, action)
		assert.Equal(t, attempts-1, events, action)
	}
	var withDigest int
	require.NoError(t, p.srv.Database().Pool.QueryRow(context.Background(),
		"SELECT count(*) FROM audit_log WHERE action = 'support.patch.completed' AND detail->>'patch_id' = 'HF-1' AND detail->>'bundle_sha256' = $1 AND outcome = 'success'",
		digest(good)).Scan(&withDigest))
	assert.Equal(t, 1, withDigest)
}

func TestPatch_LargeBundleArrivesInChunks(t *testing.T) {
	p := newPatchEnv(t)
	big := make([]byte, 7<<20) // > two chunks, over the broker's packet size in base64
	for i := range big {
		big[i] = byte(i * 7)
	}
	b := p.bundle(t, p.key, patch.Manifest{ID: "HF-BIG", Version: "2.0", Files: []patch.File{{Target: "bin/blob"}}}, map[string][]byte{"bin/blob": big})
	code, _ := p.send(t, b)
	require.Equal(t, "ok", code)
	got, err := os.ReadFile(filepath.Join(p.root, "bin", "blob"))
	require.NoError(t, err)
	assert.Equal(t, digest(big), digest(got))

	tooBig := make([]byte, patch.MaxBundle+1)
	code, _ = p.send(t, tooBig)
	assert.Equal(t, "bundle_too_large", code)
}

func TestPatch_ThroughArgusctl(t *testing.T) {
	p := newPatchEnv(t)
	keys := t.TempDir()
	out, stderr, err := testenv.Run(t, nil, "argusctl", "patch", "keygen", "--out", keys)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "patch-signing.pub")
	fi, err := os.Stat(filepath.Join(keys, "patch-signing.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	src := filepath.Join(t.TempDir(), "run.sh")
	require.NoError(t, os.WriteFile(src, []byte("#!/bin/sh\necho cli\n"), 0o750))
	bundle := filepath.Join(t.TempDir(), "hf.bundle")
	_, stderr, err = testenv.Run(t, nil, "argusctl", "patch", "build", "--key", filepath.Join(keys, "patch-signing.key"),
		"--id", "HF-CLI", "--version", "3.0", "--root", "streamer", "--not-after", "2099-01-01", "--out", bundle, src+"=bin/run.sh")
	require.NoError(t, err, stderr)
	out, stderr, err = testenv.Run(t, nil, "argusctl", "patch", "verify", "--pub", filepath.Join(keys, "patch-signing.pub"), bundle)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "valid: patch HF-CLI version 3.0")
	assert.Contains(t, out, "0750 bin/run.sh")

	// This key is not in the agent's configuration: refused there.
	data, err := os.ReadFile(bundle)
	require.NoError(t, err)
	code, _ := p.send(t, data)
	assert.Equal(t, "unknown_signer", code)
}

// failCommandsWrites makes PostgreSQL refuse an apply_patch commands row
// being inserted (op INSERT) or completed (op UPDATE).
func failCommandsWrites(t *testing.T, p *patchEnv, op string) {
	t.Helper()
	ctx := context.Background()
	pool := p.srv.Database().Pool
	_, err := pool.Exec(ctx, `CREATE FUNCTION test_refuse_patch() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.name = 'apply_patch' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "CREATE TRIGGER test_refuse_patch BEFORE "+op+" ON commands FOR EACH ROW EXECUTE FUNCTION test_refuse_patch()")
	require.NoError(t, err)
}

// TestPatch_RequestCommitsBeforeAnyChunk guards against a patch reaching
// the agent with no audit trail: the request is on record before the
// first chunk, and if it cannot be, nothing is sent.
func TestPatch_RequestCommitsBeforeAnyChunk(t *testing.T) {
	p := newPatchEnv(t)
	failCommandsWrites(t, p, "INSERT")
	before := snapshot(t, p.root)
	b := p.bundle(t, p.key, patch.Manifest{ID: "HF-N", Version: "1.2.0", Files: []patch.File{{Target: "bin/run.sh"}}},
		map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho never\n")})
	code, _ := p.send(t, b)
	assert.Equal(t, "unavailable", code)
	assert.Equal(t, before, snapshot(t, p.root), "nothing reached the agent")
	applied, err := agent.AppliedPatches(p.stateDir)
	require.NoError(t, err)
	assert.Empty(t, applied)
	p.mu.Lock()
	assert.Empty(t, p.res, "the agent answered nothing: no chunk reached it")
	p.mu.Unlock()
	requested, events := p.auditPair(t, "support.patch.requested", p.sessionID)
	assert.Zero(t, requested)
	assert.Zero(t, events)
}

// TestPatch_CompletionNotRecordedKeepsTheRequest guards against a patch
// applied with nothing on record when its final write fails: the request
// is in both trails, and the operator gets a stable code with the id.
func TestPatch_CompletionNotRecordedKeepsTheRequest(t *testing.T) {
	p := newPatchEnv(t)
	failCommandsWrites(t, p, "UPDATE")
	runV3 := []byte("#!/bin/sh\necho v3\n")
	b := p.bundle(t, p.key, patch.Manifest{ID: "HF-U", Version: "1.3.0", Files: []patch.File{{Target: "bin/run.sh"}}},
		map[string][]byte{"bin/run.sh": runV3})
	c := *p.api
	c.SessionToken = p.token
	err := c.DoRaw(context.Background(), "POST", "/v1/support/sessions/"+p.sessionID+"/patch", "application/octet-stream", b, nil)
	var apiErr *apiclient.Error
	require.True(t, asAPIError(err, &apiErr), "%v", err)
	assert.Equal(t, "completion_not_recorded", apiErr.Code)
	assert.Equal(t, 500, apiErr.Status)
	require.NotEmpty(t, apiErr.CommandID)

	got, err := os.ReadFile(filepath.Join(p.root, "bin", "run.sh"))
	require.NoError(t, err)
	assert.Equal(t, runV3, got, "the agent applied it")
	requested, events := p.auditPair(t, "support.patch.requested", p.sessionID)
	assert.Equal(t, 1, requested)
	assert.Equal(t, 1, events)
	var onRecord int
	require.NoError(t, p.srv.Database().Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM audit_log a JOIN events e ON e.id = a.id
		 WHERE a.action = 'support.patch.requested' AND a.detail->>'command_id' = $1 AND a.detail->>'patch_id' = 'HF-U'
		   AND e.payload->'detail'->>'command_id' = $1`, apiErr.CommandID).Scan(&onRecord))
	assert.Equal(t, 1, onRecord, "the request names the command the operator was given")
	var status string
	require.NoError(t, p.srv.Database().Pool.QueryRow(context.Background(), "SELECT status FROM commands WHERE id = $1", apiErr.CommandID).Scan(&status))
	assert.Equal(t, "requested", status)
}

func TestPatch_AgentKilledBetweenSwapsRollsBackAtRestart(t *testing.T) {
	// The test-only fault point: the agent kills itself (SIGKILL) right
	// after the first of three files is swapped in.
	p := newPatchEnv(t, agent.TestCrashAfterSwapEnv+"=1")
	before := snapshot(t, p.root)
	contents := map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v2\n"), "etc/app.conf": []byte("level=2\n"), "etc/new.conf": []byte("new\n")}
	files := []patch.File{{Target: "bin/run.sh", Mode: "0755"}, {Target: "etc/app.conf", Mode: "0600"}, {Target: "etc/new.conf"}}
	bundle := p.bundle(t, p.key, patch.Manifest{ID: "HF-CRASH", Version: "1.1.0", Files: files}, contents)

	// The attempt's answer never comes (the server gives up on it); the
	// test stops waiting for it when it ends.
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan struct{})
	t.Cleanup(func() { cancel(); <-sent })
	go func() {
		defer close(sent)
		_, _ = p.sendCtx(ctx, bundle)
	}()
	select {
	case <-p.proc.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not crash at the fault point")
	}
	assert.Contains(t, p.proc.Logs(), "test fault point")
	require.NotEqual(t, before, snapshot(t, p.root), "the crash left the tree half-patched")
	// Acknowledgements so far are the dead agent's.
	for len(p.acks) > 0 {
		<-p.acks
	}

	// Restarted without the fault point, the agent undoes the patch before
	// it connects.
	proc := testenv.StartAgent(t, p.stateDir, "ARGUS_AGENT_CONFIG="+p.config)
	connected := proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	assert.Equal(t, before, snapshot(t, p.root), "byte-identical to before the patch, no backups left")
	rolled := proc.WaitLog(t, 0, "PATCH ROLLED BACK AT START-UP", 1, time.Second)
	assert.Less(t, rolled, connected, "recovered before connecting")

	record, err := agent.PatchRecord(p.stateDir)
	require.NoError(t, err)
	require.Len(t, record, 1)
	assert.Equal(t, "HF-CRASH", record[0].ID)
	assert.Equal(t, agent.PatchRolledBack, record[0].State)
	assert.Equal(t, digest(bundle), record[0].Digest)
	applied, err := agent.AppliedPatches(p.stateDir)
	require.NoError(t, err)
	assert.Empty(t, applied)

	// The session is still live: the agent takes its activation again,
	// and acknowledges it once it is subscribed to its commands.
	assert.Equal(t, topics.StateActive, p.awaitAck(t, p.sessionID).State)
	code, _ := p.send(t, bundle)
	assert.Equal(t, "patch_replayed", code, "the interrupted bundle stays refused")
	assert.Equal(t, before, snapshot(t, p.root))
	caps := p.run(t, p.sessionID, p.token, "get_capabilities", nil)
	assert.Contains(t, string(caps.Data), `"rolled_back_patches"`)

	// The same fix, built again under a new id, applies.
	code, _ = p.send(t, p.bundle(t, p.key, patch.Manifest{ID: "HF-CRASH-2", Version: "1.1.0", Files: files}, contents))
	require.Equal(t, "ok", code)
	got, err := os.ReadFile(filepath.Join(p.root, "etc", "app.conf"))
	require.NoError(t, err)
	assert.Equal(t, "level=2\n", string(got))
}
