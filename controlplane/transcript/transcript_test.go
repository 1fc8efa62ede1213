package transcript_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/transcript"
)

const session = "5f0c4b8e-2d1a-4c3b-9e8f-0a1b2c3d4e5f"

// chain builds a signed transcript over seqs 10..19 whose entries at the
// given offsets are the session's and the rest another tenant's.
func chain(t *testing.T, key ed25519.PrivateKey, own ...int) *transcript.Transcript {
	t.Helper()
	tr := &transcript.Transcript{
		Session: transcript.Session{ID: session, TenantID: "11111111-1111-4111-8111-111111111111",
			AgentID: "22222222-2222-4222-8222-222222222222", CreatedAt: "2026-12-02T10:00:00.123456Z"},
		GeneratedAt: "2026-12-02T11:00:00Z", FirstSeq: 10, LastSeq: 19,
	}
	prev := make([]byte, 32)
	for i := range 10 {
		canon := fmt.Appendf(nil, `{"action":"other.thing","id":"%d","tenant_id":"secret-tenant"}`, i)
		mine := false
		for _, o := range own {
			mine = mine || o == i
		}
		if mine {
			canon = fmt.Appendf(nil, `{"action":"support.command","id":"%d","session_id":"%s"}`, i, session)
		}
		h := sha256.Sum256(append(append([]byte{}, prev...), canon...))
		e := transcript.Entry{Seq: int64(10 + i), PrevHash: hex.EncodeToString(prev), Hash: hex.EncodeToString(h[:])}
		if mine {
			e.Canonical = base64.StdEncoding.EncodeToString(canon)
			e.Event = json.RawMessage(canon)
			tr.Actions++
		}
		tr.Entries = append(tr.Entries, e)
		prev = h[:]
	}
	require.NoError(t, transcript.Sign(tr, key))
	return tr
}

func newKey(t *testing.T) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return k
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// roundTrip writes tr as the file and reads it back, as a verifier would.
func roundTrip(t *testing.T, tr *transcript.Transcript) *transcript.Transcript {
	t.Helper()
	b, err := json.MarshalIndent(tr, "", "  ")
	require.NoError(t, err)
	got, err := transcript.Parse(b)
	require.NoError(t, err)
	return got
}

func problems(ps []transcript.Problem) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, "\n")
}

func TestVerify_AcceptsASignedTranscriptWithOthersInItsSpan(t *testing.T) {
	k := newKey(t)
	tr := roundTrip(t, chain(t, k, 0, 3, 4, 9))
	assert.Empty(t, transcript.Verify(tr, pub(k)))
	assert.Equal(t, signing.KeyID(pub(k)), tr.Signature.KeyID)
	b, _ := json.Marshal(tr)
	assert.NotContains(t, string(b), "secret-tenant", "another tenant's events show no content")
}

func TestVerify_NamesWhatIsWrong(t *testing.T) {
	k := newKey(t)
	cases := []struct {
		name   string
		change func(tr *transcript.Transcript)
		want   []string
	}{
		{"one byte of an action flipped", func(tr *transcript.Transcript) {
			c, _ := base64.StdEncoding.DecodeString(tr.Entries[3].Canonical)
			c[len(c)-3] ^= 1
			tr.Entries[3].Canonical = base64.StdEncoding.EncodeToString(c)
		}, []string{"seq 13: hash is not SHA-256(prev_hash || canonical)", "seq 13: event does not say what its canonical bytes say"}},
		{"the readable event changed", func(tr *transcript.Transcript) {
			tr.Entries[4].Event = json.RawMessage(`{"action":"support.command","id":"x","session_id":"` + session + `"}`)
		}, []string{"seq 14: event does not say what its canonical bytes say"}},
		{"an action dropped", func(tr *transcript.Transcript) {
			tr.Entries = append(tr.Entries[:3], tr.Entries[4:]...)
		}, []string{"signature does not verify", "seq 13: missing", "seq 14: prev_hash does not equal the hash of seq 12",
			"says it holds 4 actions of the session; 3 are here"}},
		{"an action turned into another's", func(tr *transcript.Transcript) {
			tr.Entries[4].Canonical, tr.Entries[4].Event = "", nil
		}, []string{"signature does not verify", "says it holds 4 actions of the session; 3 are here"}},
		{"another's entry dropped", func(tr *transcript.Transcript) {
			tr.Entries = append(tr.Entries[:5], tr.Entries[6:]...)
		}, []string{"seq 15: missing", "seq 16: prev_hash does not equal the hash of seq 14"}},
		{"the last entries cut", func(tr *transcript.Transcript) {
			tr.Entries = tr.Entries[:8]
		}, []string{"seq 18: missing: the span has no entries for 18..19", "seq 17: the span must end with an action of the session"}},
		{"a hash changed", func(tr *transcript.Transcript) {
			tr.Entries[6].Hash = strings.Repeat("0", 64)
		}, []string{"signature does not verify", "seq 17: prev_hash does not equal the hash of seq 16"}},
		{"the session's end rewritten", func(tr *transcript.Transcript) {
			tr.Session.EndReason = "deactivated"
		}, []string{"signature does not verify"}},
		{"entries out of order", func(tr *transcript.Transcript) {
			tr.Entries[1], tr.Entries[2] = tr.Entries[2], tr.Entries[1]
		}, []string{"seq 11: out of order or repeated: it follows seq 12", "seq 12: prev_hash does not equal the hash of seq 10"}},
		{"an entry repeated", func(tr *transcript.Transcript) {
			tr.Entries = append(tr.Entries[:3], append([]transcript.Entry{tr.Entries[2]}, tr.Entries[3:]...)...)
		}, []string{"seq 12: out of order or repeated: it follows seq 12", "the span 10..19 needs 10 entries; the transcript holds 11"}},
		{"an entry outside the span", func(tr *transcript.Transcript) {
			tr.Entries[9].Seq = 1 << 40
		}, []string{"seq 1099511627776: outside the span 10..19", "seq 19: missing: the span has no entry for it"}},
		{"an event of another session", func(tr *transcript.Transcript) {
			c := []byte(`{"action":"support.command","session_id":"99999999-2d1a-4c3b-9e8f-0a1b2c3d4e5f"}`)
			e := &tr.Entries[9]
			p, _ := hex.DecodeString(e.PrevHash)
			h := sha256.Sum256(append(p, c...))
			e.Hash, e.Canonical, e.Event = hex.EncodeToString(h[:]), base64.StdEncoding.EncodeToString(c), json.RawMessage(c)
			require.NoError(t, transcript.Sign(tr, k)) // even when the control plane signs it
		}, []string{"seq 19: the event belongs to session \"99999999-"}},
		{"re-signed with another key", func(tr *transcript.Transcript) {
			require.NoError(t, transcript.Sign(tr, newKey(t)))
		}, []string{"signed by key ", ", not by the key given (" + signing.KeyID(pub(k)) + ")"}},
		{"re-signed with another key under this key's id", func(tr *transcript.Transcript) {
			other := newKey(t)
			tr.Signature.KeyID = signing.KeyID(pub(k))
			msg, err := transcript.SigningInput(tr)
			require.NoError(t, err)
			tr.Signature.Value = base64.StdEncoding.EncodeToString(ed25519.Sign(other, msg))
		}, []string{"signature does not verify with key " + signing.KeyID(pub(k))}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := roundTrip(t, chain(t, k, 0, 3, 4, 9))
			c.change(tr)
			got := problems(transcript.Verify(roundTrip(t, tr), pub(k)))
			require.NotEmpty(t, got, "the change must not verify")
			for _, w := range c.want {
				assert.Contains(t, got, w)
			}
		})
	}
}

func TestParse_RefusesAnotherFormatAndUnknownFields(t *testing.T) {
	_, err := transcript.Parse([]byte(`{"format":"argus-transcript/2"}`))
	assert.ErrorContains(t, err, `format "argus-transcript/2" is not "argus-transcript/1"`)
	_, err = transcript.Parse([]byte(`{"format":"argus-transcript/1","extra":1}`))
	assert.ErrorContains(t, err, "unknown field")
	_, err = transcript.Parse([]byte(`not json`))
	assert.ErrorContains(t, err, "not JSON")
}

func TestPublicKey_PEMAndBase64ReadBack(t *testing.T) {
	k := newKey(t)
	got, err := transcript.ParsePublicKey(transcript.PublicKeyPEM(pub(k)))
	require.NoError(t, err)
	assert.Equal(t, pub(k), got)
	got, err = transcript.ParsePublicKey([]byte(base64.StdEncoding.EncodeToString(pub(k)) + "\n"))
	require.NoError(t, err)
	assert.Equal(t, pub(k), got)
	_, err = transcript.ParsePublicKey([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	assert.ErrorContains(t, err, "not PUBLIC KEY")
	_, err = transcript.ParsePublicKey([]byte("hello"))
	assert.Error(t, err)
}

// The signed text is what the README documents, byte for byte.
func TestSigningInput_IsTheDocumentedText(t *testing.T) {
	tr := &transcript.Transcript{
		Session:     transcript.Session{ID: "s", TenantID: "t", AgentID: "a", CreatedAt: "c"},
		GeneratedAt: "g", FirstSeq: 7, LastSeq: 8, Actions: 1,
		Signature: transcript.Signature{KeyID: "k"},
		Entries: []transcript.Entry{
			{Seq: 7, PrevHash: strings.Repeat("0", 64), Hash: strings.Repeat("1", 64), Canonical: "e30="},
			{Seq: 8, PrevHash: strings.Repeat("1", 64), Hash: strings.Repeat("2", 64)},
		},
	}
	got, err := transcript.SigningInput(tr)
	require.NoError(t, err)
	assert.Equal(t, "argus-transcript/1\nsession s\ntenant t\nagent a\ncreated_at c\nended_at -\nend_reason -\ngenerated_at g\n"+
		"span 7 8 1\nkey_id k\n7 s "+strings.Repeat("0", 64)+" "+strings.Repeat("1", 64)+"\n8 o "+strings.Repeat("1", 64)+" "+strings.Repeat("2", 64)+"\n", string(got))
	tr.Session.EndReason = "two words"
	_, err = transcript.SigningInput(tr)
	assert.ErrorContains(t, err, "end_reason holds a space")
}
