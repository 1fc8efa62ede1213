// Package credential mints and checks bearer secrets: operator tokens,
// enrollment tokens, agent secrets and session tokens.
//
// A token is "argus_<kind>_<id>_<secret>": the id (80 random bits) finds the
// stored row, the secret (256 random bits) is stored only as its SHA-256 and
// compared in constant time. A secret with 256 bits of entropy needs no slow
// hash: nobody can guess it, and the database never holds it.
package credential

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"strings"
)

// Kind tells tokens apart, so one cannot be used where another is expected.
type Kind string

// Token kinds.
const (
	Operator   Kind = "pat"
	Enrollment Kind = "enr"
	Session    Kind = "ses"
	Viewer     Kind = "vwr"
)

const (
	idLen     = 16 // base32 characters of 10 random bytes
	secretLen = 64 // hex characters of 32 random bytes
)

// ErrMalformed is returned for a token that is not of the expected shape.
var ErrMalformed = errors.New("credential: malformed token")

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Minted is a new token: Plain is shown once to its owner; ID and Hash are stored.
type Minted struct {
	Plain string
	ID    string
	Hash  []byte
}

// Mint returns a new random token of the given kind.
func Mint(kind Kind) (Minted, error) {
	idb := make([]byte, 10)
	if _, err := rand.Read(idb); err != nil {
		return Minted{}, err
	}
	secret, err := NewSecret()
	if err != nil {
		return Minted{}, err
	}
	id := idEncoding.EncodeToString(idb)
	return Minted{
		Plain: "argus_" + string(kind) + "_" + id + "_" + secret,
		ID:    id,
		Hash:  Hash(secret),
	}, nil
}

// Parse splits a token of the given kind into its id and secret.
func Parse(kind Kind, plain string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(plain, "argus_"+string(kind)+"_")
	if !ok || len(rest) != idLen+1+secretLen || rest[idLen] != '_' {
		return "", "", ErrMalformed
	}
	id, secret = rest[:idLen], rest[idLen+1:]
	if _, err := idEncoding.DecodeString(id); err != nil {
		return "", "", ErrMalformed
	}
	if !isLowerHex(secret) {
		return "", "", ErrMalformed
	}
	return id, secret, nil
}

// NewSecret returns 256 random bits as lowercase hex, for secrets that are
// presented beside an id of their own (an agent's MQTT password).
func NewSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Hash returns the stored form of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Verify reports, in constant time, whether secret hashes to stored.
func Verify(stored []byte, secret string) bool {
	return subtle.ConstantTimeCompare(stored, Hash(secret)) == 1
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
