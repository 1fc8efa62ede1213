// Package agents holds enrolled agents: one-time enrollment tokens, the
// enrollment exchange, agent credentials for the broker, presence,
// manifests and revocation.
//
// An agent's secret is minted at enrollment, returned once, and stored only
// as its SHA-256. Everything an agent says about itself (version, manifest)
// is advisory and never used to authorize anything.
package agents

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/internal/credential"
)

// Enrollment token lifetimes.
const (
	DefaultTokenTTL = 24 * time.Hour
	MaxTokenTTL     = 7 * 24 * time.Hour
)

// Errors callers map to API codes.
var (
	ErrNotFound       = errors.New("agent not found")
	ErrTenantNotFound = errors.New("tenant not found")
	ErrNameTaken      = errors.New("the tenant already has a live agent of that name")
	ErrInvalidName    = errors.New("agent name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	ErrTokenInvalid   = errors.New("unknown enrollment token")
	ErrTokenUsed      = errors.New("enrollment token already used")
	ErrTokenExpired   = errors.New("enrollment token expired")
	ErrAlreadyRevoked = errors.New("agent already revoked")
	ErrReasonRequired = errors.New("a reason is required")
	ErrBadTTL         = errors.New("enrollment token lifetime must be between 1m and 168h")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Store reads and writes agents.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// EnrollmentToken is a minted token; Token is shown once.
type EnrollmentToken struct {
	Token     string    `json:"token"`
	TenantID  string    `json:"tenant_id"`
	Tenant    string    `json:"tenant"`
	AgentName string    `json:"agent_name"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CreateEnrollmentToken mints a one-time token that enrolls one agent named
// agentName into the tenant (by name or id).
func (s *Store) CreateEnrollmentToken(ctx context.Context, tenant, agentName string, ttl time.Duration, by audit.Entry) (EnrollmentToken, error) {
	if !nameRE.MatchString(agentName) {
		return EnrollmentToken{}, ErrInvalidName
	}
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < time.Minute || ttl > MaxTokenTTL {
		return EnrollmentToken{}, ErrBadTTL
	}
	m, err := credential.Mint(credential.Enrollment)
	if err != nil {
		return EnrollmentToken{}, err
	}
	out := EnrollmentToken{Token: m.Plain, AgentName: agentName}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lookupTenant(ctx, tx, tenant, &out.TenantID, &out.Tenant); err != nil {
			return err
		}
		var taken bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM agents WHERE tenant_id = $1 AND name = $2 AND revoked_at IS NULL)",
			out.TenantID, agentName).Scan(&taken); err != nil {
			return err
		}
		if taken {
			return ErrNameTaken
		}
		if err := tx.QueryRow(ctx, `INSERT INTO enrollment_tokens (id, tenant_id, agent_name, secret_hash, created_by, expires_at)
			VALUES ($1, $2, $3, $4, $5, now() + $6::interval) RETURNING expires_at`,
			m.ID, out.TenantID, agentName, m.Hash, nullUUID(by.OperatorID), ttl.String()).Scan(&out.ExpiresAt); err != nil {
			return err
		}
		by.Action, by.Outcome, by.TenantID = "agent.enrollment_token.create", audit.Success, out.TenantID
		by.Detail = map[string]any{"agent_name": agentName, "token_id": m.ID, "expires_at": out.ExpiresAt}
		_, err := audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return EnrollmentToken{}, fmt.Errorf("create enrollment token: %w", err)
	}
	return out, nil
}

func lookupTenant(ctx context.Context, tx pgx.Tx, ref string, id, name *string) error {
	q := "SELECT id, name FROM tenants WHERE name = $1"
	if _, err := uuid.Parse(ref); err == nil {
		q = "SELECT id, name FROM tenants WHERE id = $1::uuid"
	}
	err := tx.QueryRow(ctx, q, ref).Scan(id, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrTenantNotFound
	}
	return err
}

// Enrollment is what an agent receives for a good token; Secret is shown once.
type Enrollment struct {
	AgentID   string `json:"agent_id"`
	Secret    string `json:"secret"`
	TenantID  string `json:"tenant_id"`
	Tenant    string `json:"tenant"`
	AgentName string `json:"agent_name"`
}

// Enroll exchanges a one-time token for a new agent identity. Every
// attempt, refused or not, is audited.
func (s *Store) Enroll(ctx context.Context, token, clientIP string) (Enrollment, error) {
	var out Enrollment
	var refusal error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		entry := audit.Entry{Actor: "anonymous", Action: "agent.enroll", ClientIP: clientIP}
		refusal = s.redeem(ctx, tx, token, &out)
		if refusal != nil {
			entry.Outcome, entry.Reason = audit.Denied, refusal.Error()
			entry.TenantID = out.TenantID
			_, err := audit.Record(ctx, tx, entry)
			return err
		}
		entry.Actor, entry.Outcome = "agent:"+out.AgentID, audit.Success
		entry.TenantID, entry.AgentID = out.TenantID, out.AgentID
		entry.Detail = map[string]any{"agent_name": out.AgentName}
		_, err := audit.Record(ctx, tx, entry)
		return err
	})
	if err != nil {
		return Enrollment{}, fmt.Errorf("enroll: %w", err)
	}
	if refusal != nil {
		return Enrollment{}, refusal
	}
	return out, nil
}

// redeem checks the token and creates the agent; a refusal leaves the
// database unchanged (bar the audit the caller writes).
func (s *Store) redeem(ctx context.Context, tx pgx.Tx, token string, out *Enrollment) error {
	id, secret, err := credential.Parse(credential.Enrollment, token)
	if err != nil {
		return ErrTokenInvalid
	}
	var (
		hash    []byte
		used    bool
		expired bool
	)
	err = tx.QueryRow(ctx, `SELECT e.secret_hash, e.used_at IS NOT NULL, e.expires_at <= now(), e.tenant_id, t.name, e.agent_name
		FROM enrollment_tokens e JOIN tenants t ON t.id = e.tenant_id WHERE e.id = $1 FOR UPDATE OF e`, id).
		Scan(&hash, &used, &expired, &out.TenantID, &out.Tenant, &out.AgentName)
	if errors.Is(err, pgx.ErrNoRows) {
		credential.Verify(make([]byte, 32), secret)
		return ErrTokenInvalid
	}
	if err != nil {
		return err
	}
	if !credential.Verify(hash, secret) {
		out.TenantID = ""
		return ErrTokenInvalid
	}
	switch {
	case used:
		return ErrTokenUsed
	case expired:
		return ErrTokenExpired
	}
	agentSecret, err := credential.NewSecret()
	if err != nil {
		return err
	}
	// A savepoint, so a name clash refuses the token without aborting the
	// transaction that must still write the refusal's audit rows.
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	err = sp.QueryRow(ctx, "INSERT INTO agents (tenant_id, name, secret_hash) VALUES ($1, $2, $3) RETURNING id",
		out.TenantID, out.AgentName, credential.Hash(agentSecret)).Scan(&out.AgentID)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		_ = sp.Rollback(ctx)
		return ErrNameTaken
	}
	if err != nil {
		_ = sp.Rollback(ctx)
		return err
	}
	if _, err := sp.Exec(ctx, "UPDATE enrollment_tokens SET used_at = now(), agent_id = $2 WHERE id = $1", id, out.AgentID); err != nil {
		_ = sp.Rollback(ctx)
		return err
	}
	if err := sp.Commit(ctx); err != nil {
		return err
	}
	out.Secret = agentSecret
	return nil
}

// Agent is an agent as the API shows it.
type Agent struct {
	ID           string     `json:"id"`
	TenantID     string     `json:"tenant_id"`
	Tenant       string     `json:"tenant"`
	Name         string     `json:"name"`
	EnrolledAt   time.Time  `json:"enrolled_at"`
	RevokedAt    *time.Time `json:"revoked_at,omitempty"`
	RevokeReason string     `json:"revoke_reason,omitempty"`
	Online       bool       `json:"online"`
	// Stale is an agent connected but silent: it has missed two
	// heartbeats. Set from the node's live view, not stored.
	Stale       bool            `json:"stale,omitempty"`
	ConnectedAt *time.Time      `json:"connected_at,omitempty"`
	Node        string          `json:"node,omitempty"`
	LastSeenAt  *time.Time      `json:"last_seen_at,omitempty"`
	Version     string          `json:"version,omitempty"`
	Manifest    json.RawMessage `json:"manifest,omitempty"`
	ManifestAt  *time.Time      `json:"manifest_at,omitempty"`
	// Capabilities is the newest get_capabilities answer (advisory).
	Capabilities   json.RawMessage `json:"capabilities,omitempty"`
	CapabilitiesAt *time.Time      `json:"capabilities_at,omitempty"`
}

const selectAgent = `
	SELECT a.id, a.tenant_id, t.name, a.name, a.enrolled_at, a.revoked_at, COALESCE(a.revoke_reason, ''),
	       p.agent_id IS NOT NULL, p.connected_at, COALESCE(p.node_id, ''), a.last_seen_at, COALESCE(a.version, ''),
	       a.manifest, a.manifest_at, a.capabilities, a.capabilities_at
	FROM agents a JOIN tenants t ON t.id = a.tenant_id LEFT JOIN agent_presence p ON p.agent_id = a.id`

func scanAgent(row pgx.Row) (Agent, error) {
	var a Agent
	var manifest, caps []byte
	err := row.Scan(&a.ID, &a.TenantID, &a.Tenant, &a.Name, &a.EnrolledAt, &a.RevokedAt, &a.RevokeReason,
		&a.Online, &a.ConnectedAt, &a.Node, &a.LastSeenAt, &a.Version, &manifest, &a.ManifestAt, &caps, &a.CapabilitiesAt)
	if manifest != nil {
		a.Manifest = manifest
	}
	if caps != nil {
		a.Capabilities = caps
	}
	return a, err
}

// Filter narrows List.
type Filter struct {
	// Tenant is a tenant name or id; empty means all.
	Tenant string
	// Stale, when positive, keeps only live agents not seen for that long.
	Stale time.Duration
}

// List returns agents matching f, by tenant and name. Manifests are left
// out; Get returns them.
func (s *Store) List(ctx context.Context, f Filter) ([]Agent, error) {
	q := selectAgent + " WHERE ($1 = '' OR t.name = $1 OR t.id::text = $1)"
	args := []any{f.Tenant}
	if f.Stale > 0 {
		q += " AND a.revoked_at IS NULL AND p.agent_id IS NULL AND (a.last_seen_at IS NULL OR a.last_seen_at < now() - $2::interval)"
		args = append(args, f.Stale.String())
	}
	rows, err := s.pool.Query(ctx, q+" ORDER BY t.name, a.name, a.enrolled_at", args...)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Agent, error) {
		a, err := scanAgent(r)
		a.Manifest, a.Capabilities = nil, nil
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return list, nil
}

// Get returns one agent with its latest manifest.
func (s *Store) Get(ctx context.Context, id string) (Agent, error) {
	id, ok := input.ID(id)
	if !ok {
		return Agent{}, ErrNotFound
	}
	a, err := scanAgent(s.pool.QueryRow(ctx, selectAgent+" WHERE a.id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Agent{}, ErrNotFound
	}
	if err != nil {
		return Agent{}, fmt.Errorf("get agent: %w", err)
	}
	return a, nil
}

// Revoke marks the agent revoked, audited, and ends its sessions. Once it
// returns without error the revocation has committed: the caller tells
// the broker, which drops the agent's credential and its connection,
// before anything else can fail.
func (s *Store) Revoke(ctx context.Context, id, reason string, by audit.Entry) ([]sessions.Ended, error) {
	if reason == "" {
		return nil, ErrReasonRequired
	}
	id, ok := input.ID(id)
	if !ok {
		return nil, ErrNotFound
	}
	var a Agent
	var ended []sessions.Ended
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var revoked *time.Time
		err := tx.QueryRow(ctx, "SELECT tenant_id, revoked_at FROM agents WHERE id = $1 FOR UPDATE", id).Scan(&a.TenantID, &revoked)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if revoked != nil {
			return ErrAlreadyRevoked
		}
		if _, err := tx.Exec(ctx, "UPDATE agents SET revoked_at = now(), revoked_by = $2, revoke_reason = $3 WHERE id = $1",
			id, nullUUID(by.OperatorID), reason); err != nil {
			return err
		}
		rev := by
		rev.Action, rev.Outcome, rev.TenantID, rev.AgentID, rev.Reason = "agent.revoke", audit.Success, a.TenantID, id, reason
		if _, err := audit.Record(ctx, tx, rev); err != nil {
			return err
		}
		ended, err = sessions.EndTx(ctx, tx, "agent_id = $1", id, sessions.EndAgentRevoked, by)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("revoke agent: %w", err)
	}
	return ended, nil
}

// Credentials calls each with the stored secret hash, the revocation and
// the tenant of every agent of ids there is; ids are agent ids (UUIDs).
func (s *Store) Credentials(ctx context.Context, ids []string, each func(id string, hash []byte, revoked bool, tenantID string)) error {
	return s.eachCredential(ctx, each, "SELECT id, secret_hash, revoked_at IS NOT NULL, tenant_id FROM agents WHERE id = ANY($1::uuid[])", ids)
}

func nullUUID(s string) *string {
	if _, err := uuid.Parse(s); err != nil {
		return nil
	}
	return &s
}

// LiveCredentials calls each for every live agent's credential.
func (s *Store) LiveCredentials(ctx context.Context, each func(id string, hash []byte, tenant string)) error {
	return s.eachCredential(ctx, func(id string, hash []byte, _ bool, tenant string) { each(id, hash, tenant) },
		"SELECT id, secret_hash, false, tenant_id FROM agents WHERE revoked_at IS NULL")
}

// eachCredential calls each for every row of q: id, secret hash,
// revoked, tenant.
func (s *Store) eachCredential(ctx context.Context, each func(id string, hash []byte, revoked bool, tenantID string), q string, args ...any) error {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, tenant string
		var hash []byte
		var revoked bool
		if err := rows.Scan(&id, &hash, &revoked, &tenant); err != nil {
			return err
		}
		each(id, hash, revoked, tenant)
	}
	return rows.Err()
}
