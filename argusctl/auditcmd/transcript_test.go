package auditcmd_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/transcript"
)

// argusctl runs the CLI with no configuration and returns its output.
func argusctl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	io, _, out, errOut := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// oneAction writes a signed one-action transcript and its key's PEM.
func oneAction(t *testing.T) (file, keyFile string, key ed25519.PrivateKey) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	canon := []byte(`{"action":"support.activate","session_id":"5f0c4b8e-2d1a-4c3b-9e8f-0a1b2c3d4e5f"}`)
	prev := make([]byte, 32)
	h := sha256.Sum256(append(prev, canon...))
	tr := &transcript.Transcript{
		Session:     transcript.Session{ID: "5f0c4b8e-2d1a-4c3b-9e8f-0a1b2c3d4e5f", TenantID: "t", AgentID: "a", CreatedAt: "c"},
		GeneratedAt: "g", FirstSeq: 1, LastSeq: 1, Actions: 1,
		Entries: []transcript.Entry{{Seq: 1, PrevHash: hex.EncodeToString(prev), Hash: hex.EncodeToString(h[:]),
			Canonical: base64.StdEncoding.EncodeToString(canon), Event: canon}},
	}
	require.NoError(t, transcript.Sign(tr, key))
	b, err := json.Marshal(tr)
	require.NoError(t, err)
	dir := t.TempDir()
	file, keyFile = filepath.Join(dir, "t.json"), filepath.Join(dir, "cp.pub")
	require.NoError(t, os.WriteFile(file, b, 0o600))
	require.NoError(t, os.WriteFile(keyFile, transcript.PublicKeyPEM(key.Public().(ed25519.PublicKey)), 0o600))
	return file, keyFile, key
}

func TestVerifyTranscript_OfflineNeedsNoServer(t *testing.T) {
	file, keyFile, key := oneAction(t)
	out, _, err := argusctl(t, "audit", "verify-transcript", file, "--key", keyFile)
	require.NoError(t, err)
	assert.Contains(t, out, "verified: signed by key "+signing.KeyID(key.Public().(ed25519.PublicKey)))

	out, _, err = argusctl(t, "audit", "verify-transcript", file, "--key", keyFile, "-o", "json")
	require.NoError(t, err)
	var res struct {
		Valid    bool  `json:"valid"`
		Problems []any `json:"problems"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.True(t, res.Valid)
	assert.NotNil(t, res.Problems, "problems is [] rather than null")
}

func TestVerifyTranscript_RefusesWhatItCannotRead(t *testing.T) {
	file, keyFile, _ := oneAction(t)
	bad := filepath.Join(t.TempDir(), "bad")
	require.NoError(t, os.WriteFile(bad, []byte("not a key"), 0o600))
	_, _, err := argusctl(t, "audit", "verify-transcript", file, "--key", bad)
	assert.ErrorContains(t, err, "neither a PEM PUBLIC KEY block nor 32 bytes of base64")
	_, _, err = argusctl(t, "audit", "verify-transcript", file)
	assert.ErrorContains(t, err, `"key" not set`)
	_, _, err = argusctl(t, "audit", "verify-transcript", keyFile, "--key", keyFile)
	assert.ErrorContains(t, err, "not JSON")
}

func TestSigningKey_WritesThePEMAndChecksItsID(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	pub := key.Public().(ed25519.PublicKey)
	id := signing.KeyID(pub)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "/v1/signing-key", r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"key_id": id, "pem": string(transcript.PublicKeyPEM(pub))})
		id = "0000" // the next answer names another key
	}))
	defer api.Close()
	out := filepath.Join(t.TempDir(), "cp.pub")
	_, stderr, err := argusctl(t, "audit", "signing-key", "--server", api.URL, "--out", out)
	require.NoError(t, err)
	assert.Contains(t, stderr, "written to "+out)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	got, err := transcript.ParsePublicKey(b)
	require.NoError(t, err)
	assert.Equal(t, pub, got)

	_, _, err = argusctl(t, "audit", "signing-key", "--server", api.URL)
	assert.ErrorContains(t, err, "does not match the key id it names")
}
