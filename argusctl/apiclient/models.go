package apiclient

import (
	"encoding/json"
	"time"
)

// Tenant is a tenant as the API returns it.
type Tenant struct {
	ID             string     `json:"id"`
	Name           string     `json:"name"`
	CreatedAt      time.Time  `json:"created_at"`
	Armed          bool       `json:"armed"`
	ArmedAt        *time.Time `json:"armed_at,omitempty"`
	ArmReason      string     `json:"arm_reason,omitempty"`
	Consent        bool       `json:"consent"`
	ConsentInForce *Consent   `json:"consent_in_force,omitempty"`
	Agents         int        `json:"agents"`
}

// Consent is a recorded signed remote-support clause.
type Consent struct {
	ID             string     `json:"id"`
	DocumentID     string     `json:"document_id"`
	SignedBy       string     `json:"signed_by"`
	SignedAt       time.Time  `json:"signed_at"`
	RecordedAt     time.Time  `json:"recorded_at"`
	WithdrawnAt    *time.Time `json:"withdrawn_at,omitempty"`
	WithdrawReason string     `json:"withdraw_reason,omitempty"`
}

// Session is a support session; the token is never part of it.
type Session struct {
	ID        string     `json:"id"`
	TenantID  string     `json:"tenant_id"`
	Tenant    string     `json:"tenant"`
	AgentID   string     `json:"agent_id"`
	AgentName string     `json:"agent_name"`
	Operator  string     `json:"operator"`
	Reason    string     `json:"reason"`
	ClientIP  string     `json:"client_ip,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	AckedAt   *time.Time `json:"acked_at,omitempty"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	EndReason string     `json:"end_reason,omitempty"`
	Active    bool       `json:"active"`
	// State is set for an activation that waited for its tenant and
	// opened no session: pending_approval, approved (opening), denied,
	// timeout or withdrawn.
	State string `json:"state,omitempty"`
}

// CommandResult is an agent's answer to a command.
type CommandResult struct {
	CommandID string          `json:"command_id"`
	SessionID string          `json:"session_id"`
	Name      string          `json:"name"`
	Status    string          `json:"status"`
	Error     *ErrorBody      `json:"error,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Duration  string          `json:"duration"`
	Warning   string          `json:"warning,omitempty"`
}

// ErrorBody is a code and message.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Agent is an agent as the API returns it.
type Agent struct {
	ID           string          `json:"id"`
	TenantID     string          `json:"tenant_id"`
	Tenant       string          `json:"tenant"`
	Name         string          `json:"name"`
	EnrolledAt   time.Time       `json:"enrolled_at"`
	RevokedAt    *time.Time      `json:"revoked_at,omitempty"`
	RevokeReason string          `json:"revoke_reason,omitempty"`
	Online       bool            `json:"online"`
	Stale        bool            `json:"stale,omitempty"`
	ConnectedAt  *time.Time      `json:"connected_at,omitempty"`
	Node         string          `json:"node,omitempty"`
	LastSeenAt   *time.Time      `json:"last_seen_at,omitempty"`
	Version      string          `json:"version,omitempty"`
	Manifest     json.RawMessage `json:"manifest,omitempty"`
	ManifestAt   *time.Time      `json:"manifest_at,omitempty"`
	// Capabilities is the newest get_capabilities answer (advisory).
	Capabilities   json.RawMessage `json:"capabilities,omitempty"`
	CapabilitiesAt *time.Time      `json:"capabilities_at,omitempty"`
}

// EnrollmentToken is a minted enrollment token; Token is shown once.
type EnrollmentToken struct {
	Token     string    `json:"token"`
	TenantID  string    `json:"tenant_id"`
	Tenant    string    `json:"tenant"`
	AgentName string    `json:"agent_name"`
	ExpiresAt time.Time `json:"expires_at"`
}
