// Package transcript is the format of a session transcript, how the control
// plane signs one and how anyone checks one offline: every audited action
// of a session, in chain order, with the events chain between its first and
// last action unbroken, signed by the control-plane key.
//
// The events of a session sit in one global hash chain among other tenants'
// events. A transcript shows the session's own events in full (their
// canonical bytes, so each hash can be recomputed) and, of every other
// event in the span, only its sequence number and the two hashes: enough to
// check each link, nothing of what the event says. Dropping or changing an
// action breaks a hash, a link, the span or the signature.
//
// This package needs no database and imports only the standard library
// and the signing package, so a verifier can be built from it alone.
package transcript

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/argus-remote/argus/controlplane/signing"
)

// Format names this version of the transcript; a verifier refuses any other.
const Format = "argus-transcript/1"

// MaxBytes bounds a transcript a verifier reads (and the server writes).
const MaxBytes = 64 << 20

// Transcript is one session's transcript. Its JSON is the file format.
type Transcript struct {
	Format      string  `json:"format"`
	Session     Session `json:"session"`
	GeneratedAt string  `json:"generated_at"`
	// FirstSeq and LastSeq are the session's first and last event; every
	// seq between them has an entry.
	FirstSeq int64 `json:"first_seq"`
	LastSeq  int64 `json:"last_seq"`
	// Actions is how many entries are the session's own.
	Actions   int       `json:"actions"`
	Entries   []Entry   `json:"entries"`
	Signature Signature `json:"signature"`
}

// Session is what the transcript says of its session. Times are RFC 3339
// strings, signed as they are written.
type Session struct {
	ID        string `json:"id"`
	TenantID  string `json:"tenant_id"`
	AgentID   string `json:"agent_id"`
	CreatedAt string `json:"created_at"`
	// EndedAt and EndReason are empty while the session is live.
	EndedAt   string `json:"ended_at,omitempty"`
	EndReason string `json:"end_reason,omitempty"`
}

// Entry is one event of the span. An entry of the session carries its
// canonical bytes (base64) and, for reading, the same event as JSON; an
// entry of anything else carries only its seq and hashes.
type Entry struct {
	Seq      int64  `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
	// Canonical is base64 (standard, padded) of the exact bytes the hash
	// covers: hash = SHA-256(prev_hash || canonical).
	Canonical string `json:"canonical,omitempty"`
	// Event is Canonical decoded, to read; Canonical is what counts.
	Event json.RawMessage `json:"event,omitempty"`
}

// Own says whether the entry is one of the session's actions.
func (e Entry) Own() bool { return e.Canonical != "" }

// Signature is the control plane's ed25519 signature over SigningInput.
type Signature struct {
	Alg   string `json:"alg"`
	KeyID string `json:"key_id"`
	// Value is base64 (standard, padded) of the 64-byte signature.
	Value string `json:"value"`
}

// SigningInput is the exact byte string the signature covers: UTF-8 text,
// one field per line, each line ended by "\n":
//
//	argus-transcript/1
//	session <session.id>
//	tenant <session.tenant_id>
//	agent <session.agent_id>
//	created_at <session.created_at>
//	ended_at <session.ended_at, or - when empty>
//	end_reason <session.end_reason, or - when empty>
//	generated_at <generated_at>
//	span <first_seq> <last_seq> <actions>
//	key_id <signature.key_id>
//
// then one line per entry, in order: "<seq> <s|o> <prev_hash> <hash>",
// s for an entry of the session (one with canonical bytes), o for any
// other. Numbers are decimal, hashes lowercase hex, strings as they are in
// the JSON. An entry's canonical bytes are covered through its hash, which
// the verifier recomputes from them.
func SigningInput(t *Transcript) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(Format + "\n")
	field := func(name, v string) error {
		if v == "" {
			v = "-"
		}
		if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("%s holds a space or control character", name)
		}
		b.WriteString(name + " " + v + "\n")
		return nil
	}
	s := t.Session
	for _, f := range [][2]string{{"session", s.ID}, {"tenant", s.TenantID}, {"agent", s.AgentID}, {"created_at", s.CreatedAt},
		{"ended_at", s.EndedAt}, {"end_reason", s.EndReason}, {"generated_at", t.GeneratedAt}} {
		if err := field(f[0], f[1]); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(&b, "span %d %d %d\n", t.FirstSeq, t.LastSeq, t.Actions)
	if err := field("key_id", t.Signature.KeyID); err != nil {
		return nil, err
	}
	for _, e := range t.Entries {
		kind := "o"
		if e.Own() {
			kind = "s"
		}
		if !isHash(e.PrevHash) || !isHash(e.Hash) {
			return nil, fmt.Errorf("seq %d: prev_hash and hash must be 64 lowercase hex digits", e.Seq)
		}
		b.WriteString(strconv.FormatInt(e.Seq, 10) + " " + kind + " " + e.PrevHash + " " + e.Hash + "\n")
	}
	return b.Bytes(), nil
}

// Sign fills t's signature with key's.
func Sign(t *Transcript, key ed25519.PrivateKey) error {
	t.Format = Format
	t.Signature = Signature{Alg: "ed25519", KeyID: signing.KeyID(key.Public().(ed25519.PublicKey))}
	msg, err := SigningInput(t)
	if err != nil {
		return fmt.Errorf("transcript: sign: %w", err)
	}
	t.Signature.Value = base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg))
	return nil
}

// Problem is one thing wrong with a transcript; Seq is the entry it is
// about, 0 for the transcript as a whole.
type Problem struct {
	Seq  int64  `json:"seq,omitempty"`
	What string `json:"what"`
}

func (p Problem) String() string {
	if p.Seq != 0 {
		return fmt.Sprintf("seq %d: %s", p.Seq, p.What)
	}
	return p.What
}

// Parse reads a transcript's JSON, refusing unknown fields and another
// format, so that nothing in the file goes unchecked.
func Parse(data []byte) (*Transcript, error) {
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("transcript: over %d MiB", MaxBytes>>20)
	}
	var probe struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("transcript: not JSON: %w", err)
	}
	if probe.Format != Format {
		return nil, fmt.Errorf("transcript: format %q is not %q", probe.Format, Format)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var t Transcript
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("transcript: %w", err)
	}
	if dec.More() {
		return nil, errors.New("transcript: more than one JSON value")
	}
	return &t, nil
}

// Verify checks t against the control plane's public key and returns
// everything wrong with it; none means it verifies. It checks the
// signature and key id, that the entries run from first_seq to last_seq
// with no hole, that each links to the one before, that each of the
// session's entries hashes to its hash from its canonical bytes and is an
// event of this session, and that the span begins and ends with one.
func Verify(t *Transcript, pub ed25519.PublicKey) []Problem {
	var ps []Problem
	add := func(seq int64, format string, args ...any) {
		ps = append(ps, Problem{Seq: seq, What: fmt.Sprintf(format, args...)})
	}
	if t.Format != Format {
		add(0, "format %q is not %q", t.Format, Format)
	}

	// The signature first: what follows says where a changed file differs.
	sig := t.Signature
	switch want := signing.KeyID(pub); {
	case sig.Alg != "ed25519":
		add(0, "signature algorithm %q is not ed25519", sig.Alg)
	case sig.KeyID != want:
		add(0, "signed by key %s, not by the key given (%s)", sig.KeyID, want)
	default:
		raw, err := base64.StdEncoding.DecodeString(sig.Value)
		msg, merr := SigningInput(t)
		switch {
		case err != nil || len(raw) != ed25519.SignatureSize:
			add(0, "signature value is not 64 bytes of base64")
		case merr != nil:
			add(0, "cannot rebuild the signed text: %v", merr)
		case !ed25519.Verify(pub, msg, raw):
			add(0, "signature does not verify with key %s: the transcript was changed after it was signed", want)
		}
	}

	// The span: one entry per seq, first to last.
	if t.FirstSeq > t.LastSeq || (len(t.Entries) > 0 && t.FirstSeq < 1) {
		add(0, "span %d..%d is not a range of sequence numbers", t.FirstSeq, t.LastSeq)
	}
	if n := int64(len(t.Entries)); n == 0 {
		add(0, "the transcript holds no entries")
	} else if want := t.LastSeq - t.FirstSeq + 1; t.FirstSeq <= t.LastSeq && n != want {
		add(0, "the span %d..%d needs %d entries; the transcript holds %d", t.FirstSeq, t.LastSeq, want, n)
	}
	var prev *Entry
	own := 0
	seqs := make([]int64, 0, len(t.Entries))
	for i := range t.Entries {
		e := &t.Entries[i]
		if e.Seq < t.FirstSeq || e.Seq > t.LastSeq {
			add(e.Seq, "outside the span %d..%d", t.FirstSeq, t.LastSeq)
		} else {
			seqs = append(seqs, e.Seq)
		}
		if prev != nil && e.Seq <= prev.Seq {
			add(e.Seq, "out of order or repeated: it follows seq %d", prev.Seq)
		}
		if !isHash(e.PrevHash) {
			add(e.Seq, "prev_hash is not 64 lowercase hex digits")
		}
		if !isHash(e.Hash) {
			add(e.Seq, "hash is not 64 lowercase hex digits")
		}
		if prev != nil && e.PrevHash != prev.Hash {
			add(e.Seq, "prev_hash does not equal the hash of seq %d: the chain is broken here", prev.Seq)
		}
		prev = e
		if !e.Own() {
			if len(e.Event) > 0 {
				add(e.Seq, "an entry without canonical bytes carries an event")
			}
			continue
		}
		own++
		for _, p := range verifyOwn(e, t.Session.ID) {
			add(e.Seq, "%s", p)
		}
	}
	// Holes, from the seqs present: bounded by the entries, whatever span
	// the file claims.
	missing := func(from, to int64) {
		if from == to {
			add(from, "missing: the span has no entry for it")
		} else {
			add(from, "missing: the span has no entries for %d..%d", from, to)
		}
	}
	slices.Sort(seqs)
	seqs = slices.Compact(seqs)
	expect := t.FirstSeq
	for _, seq := range seqs {
		if seq > expect {
			missing(expect, seq-1)
		}
		expect = seq + 1
	}
	if len(t.Entries) > 0 && expect <= t.LastSeq {
		missing(expect, t.LastSeq)
	}
	if own != t.Actions {
		add(0, "the transcript says it holds %d actions of the session; %d are here", t.Actions, own)
	}
	if n := len(t.Entries); n > 0 {
		if !t.Entries[0].Own() {
			add(t.Entries[0].Seq, "the span must begin with an action of the session")
		}
		if !t.Entries[n-1].Own() {
			add(t.Entries[n-1].Seq, "the span must end with an action of the session")
		}
	}
	return ps
}

// verifyOwn checks one of the session's entries: its hash from its bytes,
// that the bytes are an event of this session, and that the readable event
// says what they say.
func verifyOwn(e *Entry, session string) []string {
	var ps []string
	canon, err := base64.StdEncoding.DecodeString(e.Canonical)
	if err != nil {
		return []string{"canonical is not base64"}
	}
	prev, perr := hex.DecodeString(e.PrevHash)
	if perr == nil && isHash(e.Hash) {
		h := sha256.New()
		h.Write(prev)
		h.Write(canon)
		if hex.EncodeToString(h.Sum(nil)) != e.Hash {
			ps = append(ps, "hash is not SHA-256(prev_hash || canonical): the event's bytes were changed")
		}
	}
	var ev struct {
		SessionID string `json:"session_id"`
	}
	if err := json.Unmarshal(canon, &ev); err != nil {
		ps = append(ps, "canonical bytes are not a JSON event")
	} else if !strings.EqualFold(ev.SessionID, session) {
		ps = append(ps, fmt.Sprintf("the event belongs to session %q, not %s", ev.SessionID, session))
	}
	if len(e.Event) > 0 && !sameJSON(canon, e.Event) {
		ps = append(ps, "event does not say what its canonical bytes say")
	}
	return ps
}

func sameJSON(a, b []byte) bool {
	var x, y any
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func isHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ParsePublicKey reads the control plane's public key as GET
// /v1/signing-key gives it: a PEM "PUBLIC KEY" block (PKIX), or the raw 32
// bytes in base64, as agents are given it at enrollment.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	if blk, _ := pem.Decode(data); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("public key: a PEM %q block, not PUBLIC KEY", blk.Type)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, errors.New("public key: not an ed25519 key")
		}
		return pub, nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("public key: neither a PEM PUBLIC KEY block nor 32 bytes of base64")
	}
	return ed25519.PublicKey(raw), nil
}

// PublicKeyPEM is pub as a PEM "PUBLIC KEY" block (PKIX), the form
// ParsePublicKey reads and openssl knows.
func PublicKeyPEM(pub ed25519.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil { // only for a key of the wrong length
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}
