// Package tenants holds the organisations whose agents ARGUS supports:
// creating and reading them. Consent and arming build on it.
package tenants

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
)

// Errors callers map to API codes.
var (
	ErrNotFound    = errors.New("tenant not found")
	ErrExists      = errors.New("tenant already exists")
	ErrInvalidName = errors.New("tenant name must be 1-63 lowercase letters, digits or -, starting with a letter or digit")
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Tenant is one tenant as the API shows it.
type Tenant struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	Armed     bool       `json:"armed"`
	ArmedAt   *time.Time `json:"armed_at,omitempty"`
	Consent   bool       `json:"consent"`
	Agents    int        `json:"agents"`
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
	SELECT t.id, t.name, t.created_at, t.armed_at, t.consent_id IS NOT NULL,
	       (SELECT count(*) FROM agents a WHERE a.tenant_id = t.id AND a.revoked_at IS NULL)
	FROM tenants t`

func scanTenant(row pgx.Row) (Tenant, error) {
	var t Tenant
	err := row.Scan(&t.ID, &t.Name, &t.CreatedAt, &t.ArmedAt, &t.Consent, &t.Agents)
	t.Armed = t.ArmedAt != nil
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
