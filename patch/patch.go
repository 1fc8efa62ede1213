// Package patch is the hotfix bundle: one file holding a manifest, the
// files it installs, and an ed25519 signature over the manifest.
//
// Trust rests on the patch-signing keys a tenant installs in the agent's
// own configuration, never on the control plane or the broker: a bundle
// is opened only against those keys, and every file is checked against
// the signed manifest's size and digest before anything is written.
package patch

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// MaxBundle bounds a bundle file.
const MaxBundle = 16 << 20

// Error is a refusal with a stable code.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func fail(code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Codes.
const (
	CodeMalformed      = "bad_bundle"
	CodeUnknownSigner  = "unknown_signer"
	CodeBadSignature   = "bad_signature"
	CodeExpired        = "patch_expired"
	CodeDigestMismatch = "digest_mismatch"
	CodePathNotAllowed = "path_not_allowed"
	CodeTooLarge       = "bundle_too_large"
)

// File is one file a patch installs.
type File struct {
	// Target is the path relative to the named patch root.
	Target string `json:"target"`
	SHA256 string `json:"sha256"`
	Mode   string `json:"mode"`
	Size   int64  `json:"size"`
}

// Manifest describes a patch; it is what the signature covers.
type Manifest struct {
	V           int       `json:"v"`
	ID          string    `json:"id"`
	Version     string    `json:"version"`
	Series      string    `json:"series"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	Root        string    `json:"root"`
	Files       []File    `json:"files"`
}

// bundle is the file on disk.
type bundle struct {
	V         int               `json:"v"`
	KeyID     string            `json:"key_id"`
	Manifest  []byte            `json:"manifest"`
	Signature []byte            `json:"signature"`
	Files     map[string][]byte `json:"files"`
}

const purpose = "argus/v1/patch\x00"

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Build signs a manifest over the given file contents (by target) and
// returns the bundle. Sizes and digests are computed here.
func Build(m Manifest, contents map[string][]byte, key ed25519.PrivateKey) ([]byte, error) {
	m.V = 1
	if m.Series == "" {
		m.Series = m.Root
	}
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	if err := checkMeta(m); err != nil {
		return nil, err
	}
	for i := range m.Files {
		f := &m.Files[i]
		if err := CheckTarget(f.Target); err != nil {
			return nil, err
		}
		data, ok := contents[f.Target]
		if !ok {
			return nil, fail(CodeMalformed, "no content for %s", f.Target)
		}
		sum := sha256.Sum256(data)
		f.SHA256, f.Size = hex.EncodeToString(sum[:]), int64(len(data))
		if f.Mode == "" {
			f.Mode = "0644"
		}
		if _, err := ParseMode(f.Mode); err != nil {
			return nil, err
		}
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	pub := key.Public().(ed25519.PublicKey)
	b := bundle{V: 1, KeyID: KeyID(pub), Manifest: mb, Signature: ed25519.Sign(key, append([]byte(purpose), mb...)), Files: contents}
	out, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	if len(out) > MaxBundle {
		return nil, fail(CodeTooLarge, "the bundle is %d bytes; the limit is %d", len(out), MaxBundle)
	}
	return out, nil
}

func checkMeta(m Manifest) error {
	switch {
	case m.ID == "" || len(m.ID) > 128 || strings.ContainsAny(m.ID, "/\\\x00"):
		return fail(CodeMalformed, "id must be 1-128 characters without slashes")
	case m.Root == "" || strings.ContainsAny(m.Root, "/\\\x00"):
		return fail(CodeMalformed, "root must name a patch root")
	case len(m.Files) == 0 || len(m.Files) > 256:
		return fail(CodeMalformed, "a patch holds 1-256 files")
	}
	if _, err := ParseVersion(m.Version); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if seen[f.Target] {
			return fail(CodeMalformed, "%s appears twice", f.Target)
		}
		seen[f.Target] = true
	}
	return nil
}

// CheckTarget accepts a clean relative path that stays inside its root.
func CheckTarget(t string) error {
	if t == "" || strings.HasPrefix(t, "/") || strings.ContainsRune(t, 0) || strings.Contains(t, "\\") {
		return fail(CodePathNotAllowed, "target %q must be a relative path inside the patch root", t)
	}
	if path.Clean(t) != t || t == "." || t == ".." || strings.HasPrefix(t, "../") {
		return fail(CodePathNotAllowed, "target %q leaves the patch root or is not clean", t)
	}
	return nil
}

// ParseMode reads an octal permission mode ("0755"); only permission bits.
func ParseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fail(CodeMalformed, "mode %q is not an octal permission (0644)", s)
	}
	return uint32(m), nil
}

// ParseVersion reads a dotted numeric version ("1.2.10").
func ParseVersion(s string) ([]int, error) {
	parts := strings.Split(s, ".")
	if s == "" || len(parts) > 6 {
		return nil, fail(CodeMalformed, "version %q is not dotted numbers (1.2.3)", s)
	}
	out := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fail(CodeMalformed, "version %q is not dotted numbers (1.2.3)", s)
		}
		out[i] = n
	}
	return out, nil
}

// Newer reports whether version a is strictly newer than b.
func Newer(a, b string) bool {
	va, err1 := ParseVersion(a)
	vb, err2 := ParseVersion(b)
	if err1 != nil || err2 != nil {
		return false
	}
	for i := 0; i < max(len(va), len(vb)); i++ {
		x, y := 0, 0
		if i < len(va) {
			x = va[i]
		}
		if i < len(vb) {
			y = vb[i]
		}
		if x != y {
			return x > y
		}
	}
	return false
}

// Inspect reads a bundle's manifest without trusting it: for the server's
// audit, which records what was sent, not what is true.
func Inspect(data []byte) (Manifest, string, error) {
	if len(data) > MaxBundle {
		return Manifest{}, "", fail(CodeTooLarge, "the bundle is %d bytes; the limit is %d", len(data), MaxBundle)
	}
	var b bundle
	if err := json.Unmarshal(data, &b); err != nil || b.V != 1 {
		return Manifest{}, "", fail(CodeMalformed, "not a patch bundle")
	}
	var m Manifest
	if err := json.Unmarshal(b.Manifest, &m); err != nil {
		return Manifest{}, "", fail(CodeMalformed, "the manifest does not parse")
	}
	sum := sha256.Sum256(data)
	return m, hex.EncodeToString(sum[:]), nil
}

// keyIDs lists keys by id, for messages.
func keyIDs(keys []ed25519.PublicKey) string {
	if len(keys) == 0 {
		return "none"
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = KeyID(k)
	}
	return strings.Join(ids, ", ")
}

// SignerKeyID is the id of the key a bundle says it is signed by, without
// checking anything ("" when data is not a bundle).
func SignerKeyID(data []byte) string {
	var b bundle
	if len(data) > MaxBundle || json.Unmarshal(data, &b) != nil {
		return ""
	}
	return b.KeyID
}

// Open verifies a bundle against the trusted keys and returns its manifest
// and file contents by target. now decides expiry.
func Open(data []byte, keys []ed25519.PublicKey, now time.Time) (Manifest, map[string][]byte, error) {
	if len(data) > MaxBundle {
		return Manifest{}, nil, fail(CodeTooLarge, "the bundle is %d bytes; the limit is %d", len(data), MaxBundle)
	}
	var b bundle
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil || b.V != 1 {
		return Manifest{}, nil, fail(CodeMalformed, "not a patch bundle")
	}
	var signer ed25519.PublicKey
	for _, k := range keys {
		if KeyID(k) == b.KeyID {
			signer = k
		}
	}
	if signer == nil {
		return Manifest{}, nil, fail(CodeUnknownSigner, "signed by key %s, which is not one of the trusted keys (%s)", b.KeyID, keyIDs(keys))
	}
	if !ed25519.Verify(signer, append([]byte(purpose), b.Manifest...), b.Signature) {
		return Manifest{}, nil, fail(CodeBadSignature, "the manifest's signature does not verify")
	}
	var m Manifest
	mdec := json.NewDecoder(bytes.NewReader(b.Manifest))
	mdec.DisallowUnknownFields()
	if err := mdec.Decode(&m); err != nil || m.V != 1 {
		return Manifest{}, nil, fail(CodeMalformed, "the manifest does not parse")
	}
	if err := checkMeta(m); err != nil {
		return Manifest{}, nil, err
	}
	if !m.NotAfter.IsZero() && now.After(m.NotAfter) {
		return Manifest{}, nil, fail(CodeExpired, "the patch expired at %s", m.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(b.Files) != len(m.Files) {
		return Manifest{}, nil, fail(CodeDigestMismatch, "the bundle holds %d files; the manifest names %d", len(b.Files), len(m.Files))
	}
	for _, f := range m.Files {
		if err := CheckTarget(f.Target); err != nil {
			return Manifest{}, nil, err
		}
		if _, err := ParseMode(f.Mode); err != nil {
			return Manifest{}, nil, err
		}
		data, ok := b.Files[f.Target]
		if !ok {
			return Manifest{}, nil, fail(CodeDigestMismatch, "%s is missing from the bundle", f.Target)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			return Manifest{}, nil, fail(CodeDigestMismatch, "%s does not match its signed size and digest", f.Target)
		}
	}
	return m, b.Files, nil
}

// EncodePublic is a public key's text form (the .pub file).
func EncodePublic(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

// ParsePublic reads a .pub file's text.
func ParsePublic(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("not an ed25519 patch-signing public key")
	}
	return ed25519.PublicKey(b), nil
}
