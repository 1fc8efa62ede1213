package apiclient

import (
	"encoding/json"
	"time"
)

// Tenant is a tenant as the API returns it.
type Tenant struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	Armed     bool       `json:"armed"`
	ArmedAt   *time.Time `json:"armed_at,omitempty"`
	Consent   bool       `json:"consent"`
	Agents    int        `json:"agents"`
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
	ConnectedAt  *time.Time      `json:"connected_at,omitempty"`
	Node         string          `json:"node,omitempty"`
	LastSeenAt   *time.Time      `json:"last_seen_at,omitempty"`
	Version      string          `json:"version,omitempty"`
	Manifest     json.RawMessage `json:"manifest,omitempty"`
	ManifestAt   *time.Time      `json:"manifest_at,omitempty"`
}

// EnrollmentToken is a minted enrollment token; Token is shown once.
type EnrollmentToken struct {
	Token     string    `json:"token"`
	TenantID  string    `json:"tenant_id"`
	Tenant    string    `json:"tenant"`
	AgentName string    `json:"agent_name"`
	ExpiresAt time.Time `json:"expires_at"`
}
