// Package tenants holds the organisations whose agents ARGUS supports:
// creating and reading them. Consent and arming build on it.
package tenants

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
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

// Errors callers map to API codes.
var (
	ErrConsentRequired = errors.New("no signed remote-support consent is on record")
	ErrNoConsent       = errors.New("no consent in force to withdraw")
	ErrReasonRequired  = errors.New("a reason is required")
	ErrBadConsent      = errors.New("document id and signer are required (at most 256 characters each)")
	ErrNotFound        = errors.New("tenant not found")
	ErrExists          = errors.New("tenant already exists")
	ErrInvalidName     = errors.New("tenant name must be 1-63 lowercase letters, digits or -, starting with a letter or digit")
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Tenant is one tenant as the API shows it.
type Tenant struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	Armed     bool       `json:"armed"`
	ArmedAt   *time.Time `json:"armed_at,omitempty"`
	ArmReason string     `json:"arm_reason,omitempty"`
	Consent   bool       `json:"consent"`
	// ConsentInForce is the signed clause the tenant rests on, if any.
	ConsentInForce *Consent `json:"consent_in_force,omitempty"`
	Agents         int      `json:"agents"`
}

// Consent is one recorded signed remote-support clause.
type Consent struct {
	ID             string     `json:"id"`
	DocumentID     string     `json:"document_id"`
	SignedBy       string     `json:"signed_by"`
	SignedAt       time.Time  `json:"signed_at"`
	RecordedAt     time.Time  `json:"recorded_at"`
	WithdrawnAt    *time.Time `json:"withdrawn_at,omitempty"`
	WithdrawReason string     `json:"withdraw_reason,omitempty"`
}

// Store reads and writes tenants.
type Store struct{ pool *pgxpool.Pool }

// NewStore returns a Store over pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Create makes a tenant, audited.
func (s *Store) Create(ctx context.Context, name string, by audit.Entry) (Tenant, error) {
	if !nameRE.MatchString(name) {
		return Tenant{}, ErrInvalidName
	}
	var t Tenant
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, "INSERT INTO tenants (name) VALUES ($1) RETURNING id, name, created_at", name).
			Scan(&t.ID, &t.Name, &t.CreatedAt)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return ErrExists
		}
		if err != nil {
			return err
		}
		by.Action, by.Outcome, by.TenantID = "tenant.create", audit.Success, t.ID
		by.Detail = map[string]any{"name": name}
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return Tenant{}, fmt.Errorf("create tenant: %w", err)
	}
	return t, nil
}

const selectTenant = `
	SELECT t.id, t.name, t.created_at, t.armed_at, COALESCE(t.arm_reason, ''), t.consent_id IS NOT NULL,
	       (SELECT count(*) FROM agents a WHERE a.tenant_id = t.id AND a.revoked_at IS NULL),
	       c.id, c.document_id, c.signed_by, c.signed_at, c.recorded_at
	FROM tenants t LEFT JOIN tenant_consents c ON c.id = t.consent_id`

func scanTenant(row pgx.Row) (Tenant, error) {
	var t Tenant
	var cid, doc, by *string
	var signed, recorded *time.Time
	err := row.Scan(&t.ID, &t.Name, &t.CreatedAt, &t.ArmedAt, &t.ArmReason, &t.Consent, &t.Agents, &cid, &doc, &by, &signed, &recorded)
	t.Armed = t.ArmedAt != nil
	if cid != nil {
		t.ConsentInForce = &Consent{ID: *cid, DocumentID: *doc, SignedBy: *by, SignedAt: *signed, RecordedAt: *recorded}
	}
	return t, err
}

// List returns every tenant, by name.
func (s *Store) List(ctx context.Context) ([]Tenant, error) {
	rows, err := s.pool.Query(ctx, selectTenant+" ORDER BY t.name")
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) { return scanTenant(r) })
}

// Get finds a tenant by name or id.
func (s *Store) Get(ctx context.Context, ref string) (Tenant, error) {
	q, arg := selectTenant+" WHERE t.name = $1", any(ref)
	if _, err := uuid.Parse(ref); err == nil {
		q = selectTenant + " WHERE t.id = $1::uuid"
	}
	t, err := scanTenant(s.pool.QueryRow(ctx, q, arg))
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, ErrNotFound
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("get tenant: %w", err)
	}
	return t, nil
}

// ConsentInput is a signed clause to record.
type ConsentInput struct {
	DocumentID string
	SignedBy   string
	SignedAt   time.Time
}

// lockTenant finds a tenant by name or id and locks its row for the
// transaction, so arm, disarm and consent changes serialise.
func lockTenant(ctx context.Context, tx pgx.Tx, ref string) (id, name string, err error) {
	q := "SELECT id, name FROM tenants WHERE name = $1 FOR UPDATE"
	if _, perr := uuid.Parse(ref); perr == nil {
		q = "SELECT id, name FROM tenants WHERE id = $1::uuid FOR UPDATE"
	}
	err = tx.QueryRow(ctx, q, ref).Scan(&id, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", ErrNotFound
	}
	return id, name, err
}

// RecordConsent stores a signed clause and makes it the one in force; a
// consent it replaces stays in the history, marked superseded.
func (s *Store) RecordConsent(ctx context.Context, ref string, in ConsentInput, by audit.Entry) (Tenant, error) {
	in.DocumentID, in.SignedBy = strings.TrimSpace(in.DocumentID), strings.TrimSpace(in.SignedBy)
	if in.DocumentID == "" || in.SignedBy == "" || len(in.DocumentID) > 256 || len(in.SignedBy) > 256 {
		return Tenant{}, ErrBadConsent
	}
	if in.SignedAt.IsZero() {
		in.SignedAt = time.Now()
	}
	var id string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if id, _, err = lockTenant(ctx, tx, ref); err != nil {
			return err
		}
		var old *string
		if err := tx.QueryRow(ctx, "SELECT consent_id FROM tenants WHERE id = $1", id).Scan(&old); err != nil {
			return err
		}
		var cid string
		if err := tx.QueryRow(ctx, `INSERT INTO tenant_consents (tenant_id, document_id, signed_by, signed_at, recorded_by)
			VALUES ($1, $2, $3, $4, $5) RETURNING id`, id, in.DocumentID, in.SignedBy, in.SignedAt, nullUUID(by.OperatorID)).Scan(&cid); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE tenants SET consent_id = $2, consent_in_force = true WHERE id = $1", id, cid); err != nil {
			return err
		}
		if old != nil {
			if _, err := tx.Exec(ctx, `UPDATE tenant_consents SET withdrawn_at = now(), withdrawn_by = $2, withdraw_reason = 'superseded by '||$3
				WHERE id = $1`, *old, nullUUID(by.OperatorID), cid); err != nil {
				return err
			}
		}
		by.Action, by.Outcome, by.TenantID = "tenant.consent.record", audit.Success, id
		by.Detail = map[string]any{"consent_id": cid, "document_id": in.DocumentID, "signed_by": in.SignedBy, "signed_at": in.SignedAt.UTC()}
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return Tenant{}, fmt.Errorf("record consent: %w", err)
	}
	return s.Get(ctx, id)
}

// WithdrawConsent withdraws the consent in force, disarms the tenant and
// ends its live sessions, in one transaction, and returns the tenant's
// id. The caller closes the ended sessions on the broker before anything
// else can fail.
func (s *Store) WithdrawConsent(ctx context.Context, ref, reason string, by audit.Entry) (string, []sessions.Ended, error) {
	if strings.TrimSpace(reason) == "" {
		return "", nil, ErrReasonRequired
	}
	var id string
	var ended []sessions.Ended
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if id, _, err = lockTenant(ctx, tx, ref); err != nil {
			return err
		}
		var cid *string
		if err := tx.QueryRow(ctx, "SELECT consent_id FROM tenants WHERE id = $1", id).Scan(&cid); err != nil {
			return err
		}
		if cid == nil {
			return ErrNoConsent
		}
		// The tenant lets go of the consent first: the foreign key refuses
		// a withdrawal while it is pointed at.
		if _, err := tx.Exec(ctx, `UPDATE tenants SET consent_id = NULL, consent_in_force = NULL, armed_at = NULL, armed_by = NULL, arm_reason = NULL
			WHERE id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE tenant_consents SET withdrawn_at = now(), withdrawn_by = $2, withdraw_reason = $3 WHERE id = $1",
			*cid, nullUUID(by.OperatorID), reason); err != nil {
			return err
		}
		e := by
		e.Action, e.Outcome, e.TenantID, e.Reason = "tenant.consent.withdraw", audit.Success, id, reason
		e.Detail = map[string]any{"consent_id": *cid}
		if _, err := audit.Record(ctx, tx, e); err != nil {
			return err
		}
		ended, err = sessions.EndTx(ctx, tx, "tenant_id = $1", id, sessions.EndConsentWithdrawn, by)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("withdraw consent: %w", err)
	}
	return id, ended, nil
}

// Consents returns the tenant's consent history, newest first.
func (s *Store) Consents(ctx context.Context, ref string) ([]Consent, error) {
	t, err := s.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT id, document_id, signed_by, signed_at, recorded_at, withdrawn_at, COALESCE(withdraw_reason, '')
		FROM tenant_consents WHERE tenant_id = $1 ORDER BY recorded_at DESC`, t.ID)
	if err != nil {
		return nil, fmt.Errorf("consents: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Consent, error) {
		var c Consent
		err := r.Scan(&c.ID, &c.DocumentID, &c.SignedBy, &c.SignedAt, &c.RecordedAt, &c.WithdrawnAt, &c.WithdrawReason)
		return c, err
	})
}

// Arm records the operator's assertion that signed consent exists. It
// fails with ErrConsentRequired when none is recorded; the database's
// CHECK refuses that state too.
func (s *Store) Arm(ctx context.Context, ref, reason string, by audit.Entry) (Tenant, error) {
	if strings.TrimSpace(reason) == "" {
		return Tenant{}, ErrReasonRequired
	}
	var id string
	var refusal error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if id, _, err = lockTenant(ctx, tx, ref); err != nil {
			return err
		}
		e := by
		e.Action, e.TenantID, e.Reason = "tenant.arm", id, reason
		var consent bool
		if err := tx.QueryRow(ctx, "SELECT consent_id IS NOT NULL FROM tenants WHERE id = $1", id).Scan(&consent); err != nil {
			return err
		}
		if !consent {
			refusal = ErrConsentRequired
			e.Outcome = audit.Denied
			e.Detail = map[string]any{"code": "tenant_consent_required"}
			_, err := audit.Record(ctx, tx, e)
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE tenants SET armed_at = now(), armed_by = $2, arm_reason = $3 WHERE id = $1",
			id, nullUUID(by.OperatorID), reason); err != nil {
			return err
		}
		e.Outcome = audit.Success
		_, err = audit.Record(ctx, tx, e)
		return err
	})
	if err != nil {
		return Tenant{}, fmt.Errorf("arm: %w", err)
	}
	if refusal != nil {
		return Tenant{}, refusal
	}
	return s.Get(ctx, id)
}

// Disarm disarms the tenant and ends its live sessions, in one
// transaction, and returns the tenant's id. The caller closes the ended
// sessions on the broker before anything else can fail.
func (s *Store) Disarm(ctx context.Context, ref, reason string, by audit.Entry) (string, []sessions.Ended, error) {
	if strings.TrimSpace(reason) == "" {
		return "", nil, ErrReasonRequired
	}
	var id string
	var ended []sessions.Ended
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if id, _, err = lockTenant(ctx, tx, ref); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE tenants SET armed_at = NULL, armed_by = NULL, arm_reason = NULL WHERE id = $1", id); err != nil {
			return err
		}
		e := by
		e.Action, e.Outcome, e.TenantID, e.Reason = "tenant.disarm", audit.Success, id, reason
		if _, err := audit.Record(ctx, tx, e); err != nil {
			return err
		}
		ended, err = sessions.EndTx(ctx, tx, "tenant_id = $1", id, sessions.EndTenantDisarmed, by)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("disarm: %w", err)
	}
	return id, ended, nil
}

func nullUUID(s string) *string {
	if _, err := uuid.Parse(s); err != nil {
		return nil
	}
	return &s
}

// Rights a tenant token may carry. Every token views; end and approve
// act on the tenant's own sessions and nothing else.
const (
	RightView    = "view"
	RightEnd     = "end"
	RightApprove = "approve"
)

// allRights is every right, in the order they are listed.
var allRights = []string{RightView, RightEnd, RightApprove}

// MaxTokenDescription bounds a token's description, in characters.
const MaxTokenDescription = 256

// Errors about tenant tokens.
var (
	ErrBadRights      = errors.New("rights are a comma-separated list of view, end and approve")
	ErrBadDescription = errors.New("a token's description is text of at most 256 characters")
	ErrTokenRevoked   = errors.New("tenant token revoked")
)

// NormalizeRights checks a list of rights and returns it in canonical
// order, without repeats and with view always in it.
func NormalizeRights(in []string) ([]string, error) {
	if len(in) > len(allRights)*2 {
		return nil, ErrBadRights
	}
	want := map[string]bool{RightView: true}
	for _, r := range in {
		if !slices.Contains(allRights, r) {
			return nil, ErrBadRights
		}
		want[r] = true
	}
	out := make([]string, 0, len(want))
	for _, r := range allRights {
		if want[r] {
			out = append(out, r)
		}
	}
	return out, nil
}

// ViewerToken is a tenant token as listed; Token is set only when it is
// minted. (Tenant tokens began as read-only viewer tokens, and keep
// their table and prefix.)
type ViewerToken struct {
	ID          string     `json:"id"`
	TenantID    string     `json:"tenant_id"`
	Token       string     `json:"token,omitempty"`
	Rights      []string   `json:"rights"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
}

// ErrViewerTokenNotFound is returned for an unknown tenant token.
var ErrViewerTokenNotFound = errors.New("tenant token not found")

// CreateViewerToken mints a tenant token with the given rights (view
// alone when none are given).
func (s *Store) CreateViewerToken(ctx context.Context, ref, description string, rights []string, by audit.Entry) (ViewerToken, error) {
	rights, err := NormalizeRights(rights)
	if err != nil {
		return ViewerToken{}, err
	}
	if input.Text("description", description, MaxTokenDescription) != nil {
		return ViewerToken{}, ErrBadDescription
	}
	m, err := credential.Mint(credential.Viewer)
	if err != nil {
		return ViewerToken{}, err
	}
	v := ViewerToken{ID: m.ID, Token: m.Plain, Description: description, Rights: rights}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if v.TenantID, _, err = lockTenant(ctx, tx, ref); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO tenant_viewer_tokens (id, tenant_id, secret_hash, description, created_by, rights)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at`, m.ID, v.TenantID, m.Hash, description, nullUUID(by.OperatorID), rights).Scan(&v.CreatedAt); err != nil {
			return err
		}
		by.Action, by.Outcome, by.TenantID = "tenant.viewer_token.create", audit.Success, v.TenantID
		by.Detail = map[string]any{"token_id": m.ID, "rights": rights}
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return ViewerToken{}, fmt.Errorf("create tenant token: %w", err)
	}
	return v, nil
}

// ViewerTokens lists a tenant's tokens.
func (s *Store) ViewerTokens(ctx context.Context, ref string) ([]ViewerToken, error) {
	t, err := s.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT id, tenant_id, rights, description, created_at, revoked_at FROM tenant_viewer_tokens
		WHERE tenant_id = $1 ORDER BY created_at`, t.ID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ViewerToken, error) {
		var v ViewerToken
		err := r.Scan(&v.ID, &v.TenantID, &v.Rights, &v.Description, &v.CreatedAt, &v.RevokedAt)
		return v, err
	})
}

// RevokeViewerToken revokes one token of the tenant. A token id of
// another tenant is not found.
func (s *Store) RevokeViewerToken(ctx context.Context, ref, id string, by audit.Entry) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tid, _, err := lockTenant(ctx, tx, ref)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "UPDATE tenant_viewer_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND tenant_id = $2", id, tid)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrViewerTokenNotFound
		}
		by.Action, by.Outcome, by.TenantID = "tenant.viewer_token.revoke", audit.Success, tid
		by.Detail = map[string]any{"token_id": id}
		_, err = audit.Record(ctx, tx, by)
		return err
	})
}

// TokenGrant is what a live tenant token grants: its own tenant, with
// its rights.
type TokenGrant struct {
	TokenID  string
	TenantID string
	Rights   []string
}

// Has reports whether the grant carries right.
func (g TokenGrant) Has(right string) bool { return slices.Contains(g.Rights, right) }

// TokenID returns the id part of a tenant token, or "" when it is not
// shaped like one: for the audit of a refused token.
func TokenID(plain string) string {
	id, _, err := credential.Parse(credential.Viewer, plain)
	if err != nil {
		return ""
	}
	return id
}

// AuthenticateToken returns what a tenant token grants. It fails with
// ErrViewerTokenNotFound for a token that is unknown or whose secret is
// wrong, and with ErrTokenRevoked for one revoked (said only to whoever
// holds its secret).
func (s *Store) AuthenticateToken(ctx context.Context, plain string) (TokenGrant, error) {
	id, secret, err := credential.Parse(credential.Viewer, plain)
	if err != nil {
		return TokenGrant{}, ErrViewerTokenNotFound
	}
	g := TokenGrant{TokenID: id}
	var hash []byte
	var revoked bool
	err = s.pool.QueryRow(ctx, "SELECT tenant_id, rights, secret_hash, revoked_at IS NOT NULL FROM tenant_viewer_tokens WHERE id = $1", id).
		Scan(&g.TenantID, &g.Rights, &hash, &revoked)
	if errors.Is(err, pgx.ErrNoRows) {
		return TokenGrant{}, ErrViewerTokenNotFound
	}
	if err != nil {
		return TokenGrant{}, fmt.Errorf("authenticate tenant token: %w", err)
	}
	if !credential.Verify(hash, secret) {
		return TokenGrant{}, ErrViewerTokenNotFound
	}
	if revoked {
		return TokenGrant{}, ErrTokenRevoked
	}
	return g, nil
}

// AuthenticateViewer returns the tenant of a live tenant token.
func (s *Store) AuthenticateViewer(ctx context.Context, plain string) (string, error) {
	g, err := s.AuthenticateToken(ctx, plain)
	if err != nil {
		return "", ErrViewerTokenNotFound
	}
	return g.TenantID, nil
}
