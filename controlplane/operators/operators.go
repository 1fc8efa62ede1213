// Package operators holds the people who run ARGUS and their bearer tokens:
// creating them, and turning a presented token into a Principal.
//
// Token secrets are stored only as hashes and compared in constant time
// (package credential); this package never logs or returns a secret except
// the once it is minted.
package operators

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/rowcache"
	"github.com/argus-remote/argus/internal/credential"
)

// Scope is a permission carried by a token.
type Scope string

// The scopes. Each guards one kind of action; no scope implies another.
const (
	ScopeRemoteSupport Scope = "remote_support"
	ScopeTenantArm     Scope = "tenant:arm"
	ScopeTenantAdmin   Scope = "tenant:admin"
	ScopeAgentAdmin    Scope = "agent:admin"
	ScopeAuditRead     Scope = "audit:read"
	ScopeOperatorAdmin Scope = "operator:admin"
	ScopeMonitor       Scope = "monitor"
)

// AllScopes lists every scope, in a stable order.
var AllScopes = []Scope{
	ScopeRemoteSupport, ScopeTenantArm, ScopeTenantAdmin, ScopeAgentAdmin,
	ScopeAuditRead, ScopeOperatorAdmin, ScopeMonitor,
}

// ParseScopes validates scope names; it refuses unknown and empty lists.
func ParseScopes(names []string) ([]Scope, error) {
	if len(names) == 0 {
		return nil, errors.New("at least one scope is required")
	}
	var out []Scope
	for _, n := range names {
		s := Scope(strings.TrimSpace(n))
		if !slices.Contains(AllScopes, s) {
			return nil, fmt.Errorf("unknown scope %q (known: %s)", n, joinScopes(AllScopes))
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

func joinScopes(s []Scope) string {
	names := make([]string, len(s))
	for i, v := range s {
		names[i] = string(v)
	}
	return strings.Join(names, ", ")
}

// Principal is an authenticated operator, as seen through one token.
type Principal struct {
	OperatorID   string    `json:"operator_id"`
	OperatorName string    `json:"operator"`
	TokenID      string    `json:"token_id"`
	Scopes       []Scope   `json:"scopes"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"`
}

// Has reports whether the principal carries scope s.
func (p Principal) Has(s Scope) bool { return slices.Contains(p.Scopes, s) }

// Authentication failures. They are distinct so the API can give each its
// code; the unknown and the wrong-secret cases are one error, so a token id
// cannot be probed.
var (
	ErrMalformed = errors.New("malformed token")
	ErrInvalid   = errors.New("unknown token")
	ErrExpired   = errors.New("token expired")
	ErrRevoked   = errors.New("token revoked")
	ErrDisabled  = errors.New("operator disabled")
	ErrExists    = errors.New("operator already exists")
	// ErrNotFound is an operator, or an operator's token, that does not exist.
	ErrNotFound = errors.New("no such operator")
	// ErrTokenNotFound is a token id the operator does not hold.
	ErrTokenNotFound = errors.New("no such token for this operator")
	// ErrBadTTL is a lifetime that is not positive.
	ErrBadTTL = errors.New("a token's lifetime must be positive")
)

// Store reads and writes operators and tokens.
type Store struct {
	pool *pgxpool.Pool
	now  func() time.Time
	rows *rowcache.Cache[tokenRow] // nil: read every time
}

// NewStore returns a Store over pool.
func NewStore(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool, now: time.Now}
}

// NewToken describes a token to mint.
type NewToken struct {
	Scopes      []Scope
	Description string
	// TTL is the token's lifetime; zero means it does not expire.
	TTL time.Duration
}

// Create makes a new operator with a first token, returned in plain text
// once.
func (s *Store) Create(ctx context.Context, name string, tok NewToken) (Principal, string, error) {
	var p Principal
	var plain string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, "INSERT INTO operators (name) VALUES ($1) RETURNING id", name).Scan(&p.OperatorID)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return fmt.Errorf("%w: %q", ErrExists, name)
		}
		if errors.As(err, &pgErr) && pgErr.Code == "23514" {
			return fmt.Errorf("operator name %q: use letters, digits and . _ @ - (at most 128)", name)
		}
		if err != nil {
			return err
		}
		p.OperatorName = name
		p.TokenID, plain, p.ExpiresAt, err = s.insertToken(ctx, tx, p.OperatorID, tok)
		p.Scopes = tok.Scopes
		return err
	})
	if err != nil {
		return Principal{}, "", fmt.Errorf("create operator: %w", err)
	}
	return p, plain, nil
}

func (s *Store) insertToken(ctx context.Context, tx pgx.Tx, operatorID string, tok NewToken) (id, plain string, expires time.Time, err error) {
	if len(tok.Scopes) == 0 {
		return "", "", time.Time{}, errors.New("a token needs at least one scope")
	}
	m, err := credential.Mint(credential.Operator)
	if err != nil {
		return "", "", time.Time{}, err
	}
	var exp *time.Time
	if tok.TTL > 0 {
		expires = s.now().Add(tok.TTL).UTC()
		exp = &expires
	}
	_, err = tx.Exec(ctx, `INSERT INTO operator_tokens (id, operator_id, secret_hash, scopes, description, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, m.ID, operatorID, m.Hash, tok.Scopes, tok.Description, exp)
	if err != nil {
		return "", "", time.Time{}, err
	}
	return m.ID, m.Plain, expires, nil
}

// tokenRow is what authentication reads of a token and its operator.
type tokenRow struct {
	operatorID, operatorName   string
	hash                       []byte
	scopes                     []Scope
	expires, revoked, disabled *time.Time
	lastUsedAt                 *time.Time
}

// Token rows are cached for this long at most; changes evict them sooner
// (see rowcache).
const (
	cacheTTL = 10 * time.Second
	cacheMax = 10_000
)

// UseCache keeps the token rows Authenticate reads in a cache that l keeps
// fresh, so that a request is not a query.
func (s *Store) UseCache(l *rowcache.Listener) {
	s.rows = rowcache.New[tokenRow](l, "operator_tokens", cacheTTL, cacheMax)
}

func (s *Store) token(ctx context.Context, id string) (tokenRow, error) {
	if r, ok := s.rows.Get(id); ok {
		return r, nil
	}
	gen := s.rows.Gen()
	var (
		r      tokenRow
		scopes []string
	)
	err := s.pool.QueryRow(ctx, `
		SELECT t.operator_id, o.name, t.secret_hash, t.scopes, t.expires_at, t.revoked_at, o.disabled_at, t.last_used_at
		FROM operator_tokens t JOIN operators o ON o.id = t.operator_id
		WHERE t.id = $1`, id).Scan(&r.operatorID, &r.operatorName, &r.hash, &scopes, &r.expires, &r.revoked, &r.disabled, &r.lastUsedAt)
	if err != nil {
		return tokenRow{}, err
	}
	for _, sc := range scopes {
		r.scopes = append(r.scopes, Scope(sc))
	}
	s.rows.Put(id, r, gen)
	return r, nil
}

// Authenticate turns a presented token into a Principal, or says why not.
func (s *Store) Authenticate(ctx context.Context, plain string) (Principal, error) {
	id, secret, err := credential.Parse(credential.Operator, plain)
	if err != nil {
		return Principal{}, ErrMalformed
	}
	r, err := s.token(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		// Spend the same hashing work as a found token does.
		credential.Verify(make([]byte, 32), secret)
		return Principal{}, ErrInvalid
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate: %w", err)
	}
	if !credential.Verify(r.hash, secret) {
		return Principal{}, ErrInvalid
	}
	// Only a holder of the secret learns why a real token no longer works.
	now := s.now()
	switch {
	case r.revoked != nil:
		return Principal{}, ErrRevoked
	case r.disabled != nil:
		return Principal{}, ErrDisabled
	case r.expires != nil && !now.Before(*r.expires):
		return Principal{}, ErrExpired
	}
	p := Principal{OperatorID: r.operatorID, OperatorName: r.operatorName, TokenID: id, Scopes: slices.Clone(r.scopes)}
	if r.expires != nil {
		p.ExpiresAt = r.expires.UTC()
	}
	// Record use at most once a minute, so authentication is not a write per request.
	if r.lastUsedAt == nil || now.Sub(*r.lastUsedAt) > time.Minute {
		if _, err := s.pool.Exec(ctx, "UPDATE operator_tokens SET last_used_at = now() WHERE id = $1", id); err != nil {
			return Principal{}, fmt.Errorf("authenticate: %w", err)
		}
		s.rows.Evict(id)
	}
	return p, nil
}

// Operator is an operator as listed to administrators; it never holds secrets.
type Operator struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	CreatedAt    time.Time  `json:"created_at"`
	DisabledAt   *time.Time `json:"disabled_at,omitempty"`
	ActiveTokens int        `json:"active_tokens"`
}

// List returns every operator, by name.
func (s *Store) List(ctx context.Context) ([]Operator, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT o.id, o.name, o.created_at, o.disabled_at,
		       count(t.id) FILTER (WHERE t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()))
		FROM operators o LEFT JOIN operator_tokens t ON t.operator_id = o.id
		GROUP BY o.id ORDER BY o.name`)
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Operator, error) {
		var o Operator
		err := row.Scan(&o.ID, &o.Name, &o.CreatedAt, &o.DisabledAt, &o.ActiveTokens)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", err)
	}
	return list, nil
}

// Any reports whether any operator exists, disabled ones included.
func (s *Store) Any(ctx context.Context) (bool, error) {
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM operators)`).Scan(&exists); err != nil {
		return false, fmt.Errorf("look for operators: %w", err)
	}
	return exists, nil
}

// TokenInfo is an operator token as listed to administrators: never its
// secret, except in the one answer that mints it.
type TokenInfo struct {
	ID          string     `json:"id"`
	Operator    string     `json:"operator"`
	Scopes      []Scope    `json:"scopes"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt  *time.Time `json:"last_used_at,omitempty"`
}

// lockOperator finds an operator by name and locks its row, so a token
// is never added to an operator being disabled without one of them
// seeing the other.
func lockOperator(ctx context.Context, tx pgx.Tx, name string) (id string, err error) {
	err = tx.QueryRow(ctx, "SELECT id FROM operators WHERE name = $1 FOR UPDATE", name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return id, err
}

// CreateToken mints a new token for an existing operator (a lost token is
// replaced this way) and audits it as by; the token is returned in plain
// text once.
func (s *Store) CreateToken(ctx context.Context, operator string, tok NewToken, by audit.Entry) (TokenInfo, string, error) {
	if tok.TTL < 0 {
		return TokenInfo{}, "", ErrBadTTL
	}
	var info TokenInfo
	var plain string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		opID, err := lockOperator(ctx, tx, operator)
		if err != nil {
			return err
		}
		var exp time.Time
		if info.ID, plain, exp, err = s.insertToken(ctx, tx, opID, tok); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT created_at FROM operator_tokens WHERE id = $1", info.ID).Scan(&info.CreatedAt); err != nil {
			return err
		}
		info.Operator, info.Scopes, info.Description = operator, tok.Scopes, tok.Description
		detail := map[string]any{"operator": operator, "token_id": info.ID, "scopes": scopeNames(tok.Scopes)}
		if !exp.IsZero() {
			info.ExpiresAt = &exp
			detail["expires_at"] = exp.Format(time.RFC3339)
		}
		maps.Copy(detail, by.Detail)
		by.Action, by.Outcome, by.Detail = "operator.token.create", audit.Success, detail
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	if err != nil {
		return TokenInfo{}, "", fmt.Errorf("create token: %w", err)
	}
	return info, plain, nil
}

func scopeNames(sc []Scope) []any {
	out := make([]any, len(sc))
	for i, v := range sc {
		out[i] = string(v)
	}
	return out
}

// Tokens lists an operator's tokens, live or not, oldest first.
func (s *Store) Tokens(ctx context.Context, operator string) ([]TokenInfo, error) {
	var opID string
	err := s.pool.QueryRow(ctx, "SELECT id FROM operators WHERE name = $1", operator).Scan(&opID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, operator)
	}
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT id, scopes, description, created_at, expires_at, revoked_at, last_used_at
		FROM operator_tokens WHERE operator_id = $1 ORDER BY created_at, id`, opID)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TokenInfo, error) {
		t := TokenInfo{Operator: operator}
		var scopes []string
		err := row.Scan(&t.ID, &scopes, &t.Description, &t.CreatedAt, &t.ExpiresAt, &t.RevokedAt, &t.LastUsedAt)
		for _, sc := range scopes {
			t.Scopes = append(t.Scopes, Scope(sc))
		}
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return list, nil
}

// RevokeToken revokes one of an operator's tokens and audits it as by. It
// is idempotent. The token is refused from the moment it returns: its
// cached row is dropped before then.
func (s *Store) RevokeToken(ctx context.Context, operator, tokenID string, by audit.Entry) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		opID, err := lockOperator(ctx, tx, operator)
		if err != nil {
			return err
		}
		var already bool
		err = tx.QueryRow(ctx, `UPDATE operator_tokens t SET revoked_at = COALESCE(t.revoked_at, now())
			FROM operator_tokens o WHERE t.id = o.id AND t.id = $1 AND t.operator_id = $2
			RETURNING o.revoked_at IS NOT NULL`, tokenID, opID).Scan(&already)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrTokenNotFound
		}
		if err != nil {
			return err
		}
		by.Action, by.Outcome = "operator.token.revoke", audit.Success
		by.Detail = map[string]any{"operator": operator, "token_id": tokenID, "already_revoked": already}
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	// Evicted whether or not the commit succeeded: a cache miss is only a
	// read.
	s.rows.Evict(tokenID)
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	return nil
}

// SetDisabled disables (or enables again) an operator and audits it as
// by; every token of a disabled operator is refused from the moment it
// returns. It returns the ids of the operator's tokens, so the caller can
// end the connections they opened.
func (s *Store) SetDisabled(ctx context.Context, operator string, disabled bool, by audit.Entry) ([]string, error) {
	var ids []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		opID, err := lockOperator(ctx, tx, operator)
		if err != nil {
			return err
		}
		var was *time.Time
		if err := tx.QueryRow(ctx, "SELECT disabled_at FROM operators WHERE id = $1", opID).Scan(&was); err != nil {
			return err
		}
		if disabled {
			_, err = tx.Exec(ctx, "UPDATE operators SET disabled_at = COALESCE(disabled_at, now()) WHERE id = $1", opID)
		} else {
			_, err = tx.Exec(ctx, "UPDATE operators SET disabled_at = NULL WHERE id = $1", opID)
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "SELECT id FROM operator_tokens WHERE operator_id = $1", opID)
		if err != nil {
			return err
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		by.Action, by.Outcome = "operator.enable", audit.Success
		if disabled {
			by.Action = "operator.disable"
		}
		by.Detail = map[string]any{"operator": operator, "target_operator_id": opID, "was_disabled": was != nil, "tokens": len(ids)}
		_, err = audit.Record(ctx, tx, by)
		return err
	})
	for _, id := range ids {
		s.rows.Evict(id)
	}
	if err != nil {
		return nil, fmt.Errorf("set operator disabled: %w", err)
	}
	return ids, nil
}

// TokenLive reports whether a token is still good: not revoked, not
// expired, its operator not disabled. It reads the cached row, so it is
// cheap to ask often (the broker asks it for every monitor connection).
func (s *Store) TokenLive(ctx context.Context, id string) (bool, error) {
	r, err := s.token(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return r.revoked == nil && r.disabled == nil && (r.expires == nil || s.now().Before(*r.expires)), nil
}
