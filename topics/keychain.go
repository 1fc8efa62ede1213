package topics

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// Signing purposes of the key chain: a key change is signed by the key it
// follows, a retirement by the key that stays.
const (
	PurposeKeyChange = "argus/v1/key-change"
	PurposeKeyRetire = "argus/v1/key-retire"
)

// KindKeyChain marks a KeyChainMsg. It travels on the agent's activation
// topic, which only the control plane may publish on and only that agent
// may read; activations carry no kind, so the two cannot be confused (and
// their signatures are for different purposes anyway).
const KindKeyChain = "key_chain"

// MaxKeyChain bounds a key chain message: MaxKeys links and retirements
// of a few hundred bytes each.
const MaxKeyChain = MaxEnvelope

// MaxKeys bounds the keys a chain may hold, so the chain message stays
// under MaxKeyChain.
const MaxKeys = 32

// KeyID names a control-plane public key: the hex of the first 16 bytes of
// its SHA-256. Signatures and key changes name their key by it.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:16])
}

// KeyLink introduces the key PublicKey (KeyID), following PrevKeyID. Its
// signed form (Sign with PurposeKeyChange) is made with PrevKeyID's
// private key, so only a holder of the current key can introduce the next.
type KeyLink struct {
	V         int    `json:"v"`
	Seq       int    `json:"seq"`
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"`
	PrevKeyID string `json:"prev_key_id"`
	IssuedAt  string `json:"issued_at"`
}

// KeyRetirement withdraws KeyID. Its signed form (PurposeKeyRetire) is made
// by ByKeyID, a newer key that stays trusted.
type KeyRetirement struct {
	V         int    `json:"v"`
	KeyID     string `json:"key_id"`
	ByKeyID   string `json:"by_key_id"`
	RetiredAt string `json:"retired_at"`
}

// KeyChainMsg carries every key change and retirement so far, oldest
// first, each signed on its own. It is not itself signed: an agent checks
// each link against the keys it already trusts, so whoever relays the
// chain cannot add to it.
type KeyChainMsg struct {
	V           int               `json:"v"`
	Kind        string            `json:"kind"`
	Links       []json.RawMessage `json:"links"`
	Retirements []json.RawMessage `json:"retirements,omitempty"`
}

// IsKeyChain reports whether an activation-topic message is a key chain
// (rather than a signed activation). It decodes nothing else.
func IsKeyChain(data []byte) bool {
	var probe struct {
		Kind string `json:"kind"`
	}
	return len(data) <= MaxKeyChain && json.Unmarshal(data, &probe) == nil && probe.Kind == KindKeyChain
}
