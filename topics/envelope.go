package topics

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Version is the envelope version every message carries as "v".
const Version = 1

// MaxEnvelope bounds a control message (activation, heartbeat, manifest).
const MaxEnvelope = 32 << 10

// Activation states.
const (
	StateActive  = "active"
	StateDormant = "dormant"
)

// ActivationMsg is the signed, retained activation state of one agent.
type ActivationMsg struct {
	V         int       `json:"v"`
	AgentID   string    `json:"agent_id"`
	TenantID  string    `json:"tenant_id,omitempty"`
	State     string    `json:"state"`
	SessionID string    `json:"session_id,omitempty"`
	Operator  string    `json:"operator,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// ActivationAckMsg confirms the agent applied an activation state.
type ActivationAckMsg struct {
	V         int    `json:"v"`
	AgentID   string `json:"agent_id"`
	SessionID string `json:"session_id,omitempty"`
	State     string `json:"state"`
	// Error is a refusal code when the agent did not apply the state.
	Error string `json:"error,omitempty"`
}

// CommandMsg is a signed command for one agent within one session.
type CommandMsg struct {
	V         int             `json:"v"`
	ID        string          `json:"id"`
	SessionID string          `json:"session_id"`
	TenantID  string          `json:"tenant_id"`
	AgentID   string          `json:"agent_id"`
	Name      string          `json:"name"`
	Args      json.RawMessage `json:"args,omitempty"`
	IssuedAt  time.Time       `json:"issued_at"`
	ExpiresAt time.Time       `json:"expires_at"`
}

// Result statuses.
const (
	ResultOK      = "ok"
	ResultError   = "error"
	ResultRefused = "refused"
)

// ResultMsg answers one command.
type ResultMsg struct {
	V         int             `json:"v"`
	CommandID string          `json:"command_id"`
	SessionID string          `json:"session_id,omitempty"`
	AgentID   string          `json:"agent_id"`
	Status    string          `json:"status"`
	Error     *ErrorBody      `json:"error,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Completed time.Time       `json:"completed_at"`
}

// ErrorBody is a stable code with a message, as in the HTTP API.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// HeartbeatMsg says the agent is alive.
type HeartbeatMsg struct {
	V          int    `json:"v"`
	AgentID    string `json:"agent_id"`
	Version    string `json:"version"`
	State      string `json:"state"`
	SessionID  string `json:"session_id,omitempty"`
	KillSwitch bool   `json:"kill_switch,omitempty"`
	// Interval is the agent's heartbeat period in seconds: two missed
	// make it stale.
	Interval int `json:"interval_s,omitempty"`
	// SigningKey and OldestKey are the KeyIDs of the newest and oldest
	// control-plane keys the agent trusts: how the control plane learns
	// that it has followed a key change or retirement.
	SigningKey string    `json:"signing_key,omitempty"`
	OldestKey  string    `json:"oldest_signing_key,omitempty"`
	Time       time.Time `json:"time"`
}

// ManifestMsg is the agent's advisory description of itself. It is never
// used to authorize anything.
type ManifestMsg struct {
	V             int       `json:"v"`
	AgentID       string    `json:"agent_id"`
	AgentVersion  string    `json:"agent_version"`
	OS            string    `json:"os"`
	Arch          string    `json:"arch"`
	Hostname      string    `json:"hostname"`
	Commands      []string  `json:"commands"`
	LogFiles      []string  `json:"log_files"`
	ReadableRoots []string  `json:"readable_roots"`
	Cameras       []string  `json:"cameras"`
	Time          time.Time `json:"time"`
}

// AgentStatusMsg is the retained presence of one agent, for monitors.
type AgentStatusMsg struct {
	V         int       `json:"v"`
	AgentID   string    `json:"agent_id"`
	TenantID  string    `json:"tenant_id"`
	Online    bool      `json:"online"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	Version   string    `json:"version,omitempty"`
	State     string    `json:"state"`
	SessionID string    `json:"session_id,omitempty"`
	// Stale is an agent still connected that has missed two heartbeats.
	Stale bool      `json:"stale,omitempty"`
	Time  time.Time `json:"time"`
}

// FeedMax bounds the entries a tenant's command feed holds.
const FeedMax = 50

// FeedMsg is the retained feed of a tenant's recent commands, newest
// first, at most FeedMax of them. It says what was touched (a log's name
// and line count, a file's path and size, a camera's name, a patch's id
// and version), never what was read.
type FeedMsg struct {
	V        int         `json:"v"`
	TenantID string      `json:"tenant_id"`
	Entries  []FeedEntry `json:"entries"`
	Time     time.Time   `json:"time"`
}

// FeedEntry is one completed command in a tenant's feed.
type FeedEntry struct {
	CommandID string `json:"command_id"`
	SessionID string `json:"session_id"`
	AgentID   string `json:"agent_id"`
	Operator  string `json:"operator"`
	Command   string `json:"command"`
	// Summary is a short, safe account of what the command touched.
	Summary string `json:"summary,omitempty"`
	// Outcome is the command's recorded status: succeeded, failed,
	// refused, timeout or interrupted; Code is its error code, if any.
	Outcome     string    `json:"outcome"`
	Code        string    `json:"code,omitempty"`
	CompletedAt time.Time `json:"completed_at"`
}

// signed is the wire form of a signed message. The signature covers a
// purpose label and the exact payload bytes, so a signature made for one
// kind of message can never validate another.
type signed struct {
	V       int    `json:"v"`
	Payload []byte `json:"payload"`
	Sig     []byte `json:"sig"`
}

// Signing purposes.
const (
	PurposeActivation = "argus/v1/activation"
	PurposeCommand    = "argus/v1/command"
)

// Signature errors.
var (
	ErrBadSignature = errors.New("topics: bad signature")
	ErrTooLarge     = errors.New("topics: message too large")
	ErrMalformed    = errors.New("topics: malformed message")
)

// Sign marshals v and signs it for purpose.
func Sign(key ed25519.PrivateKey, purpose string, v any) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(key, signingInput(purpose, payload))
	return json.Marshal(signed{V: Version, Payload: payload, Sig: sig})
}

// Open checks data's signature for purpose against pub and decodes the
// payload into v. Nothing is decoded unless the signature holds.
func Open(pub ed25519.PublicKey, purpose string, data []byte, max int, v any) error {
	if len(data) > max {
		return ErrTooLarge
	}
	var s signed
	if err := json.Unmarshal(data, &s); err != nil || s.V != Version {
		return ErrMalformed
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, signingInput(purpose, s.Payload), s.Sig) {
		return ErrBadSignature
	}
	if err := json.Unmarshal(s.Payload, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// Unverified decodes a signed message's payload into v WITHOUT checking
// its signature: only to learn which key to check it with. Nothing it
// returns may be trusted until Open has checked the same bytes.
func Unverified(data []byte, max int, v any) error {
	if len(data) > max {
		return ErrTooLarge
	}
	var s signed
	if err := json.Unmarshal(data, &s); err != nil || s.V != Version {
		return ErrMalformed
	}
	if err := json.Unmarshal(s.Payload, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

func signingInput(purpose string, payload []byte) []byte {
	b := make([]byte, 0, len(purpose)+1+len(payload))
	b = append(b, purpose...)
	b = append(b, 0)
	return append(b, payload...)
}

// Decode reads an unsigned envelope, bounded by max bytes.
func Decode(data []byte, max int, v any) error {
	if len(data) > max {
		return ErrTooLarge
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// EncodePublicKey is the text form of the control plane's public key, as
// handed to agents at enrollment.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey parses EncodePublicKey's output.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("topics: not an ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}
