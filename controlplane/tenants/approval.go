package tenants

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/argus-remote/argus/controlplane/audit"
)

// Approval modes: off opens an activation once it passes the other gates
// (as before); required makes it wait for the tenant's decision.
const (
	ApprovalOff      = "off"
	ApprovalRequired = "required"
)

// Bounds of the approval timeout (the database's CHECK holds the same).
const (
	MinApprovalTimeout     = 5 * time.Second
	MaxApprovalTimeout     = time.Hour
	DefaultApprovalTimeout = 10 * time.Minute
)

// Errors of the approval setting.
var (
	ErrBadApprovalMode    = errors.New("mode is required or off")
	ErrBadApprovalTimeout = fmt.Errorf("timeout is a duration from %v to %v (like 10m)", MinApprovalTimeout, MaxApprovalTimeout)
)

// ApprovalSetting is a tenant's approval mode.
type ApprovalSetting struct {
	TenantID string `json:"tenant_id"`
	Tenant   string `json:"tenant"`
	Mode     string `json:"mode"`
	Timeout  string `json:"timeout"`
}

// CheckApproval checks a mode and timeout before anything is written.
// A zero timeout keeps the tenant's current one.
func CheckApproval(mode string, timeout time.Duration) error {
	if mode != ApprovalOff && mode != ApprovalRequired {
		return ErrBadApprovalMode
	}
	if timeout != 0 && (timeout < MinApprovalTimeout || timeout > MaxApprovalTimeout) {
		return ErrBadApprovalTimeout
	}
	return nil
}

// SetApproval sets the tenant's approval mode (and timeout, unless zero),
// audited with what it was before. Callers check the bounds with
// CheckApproval first.
func (s *Store) SetApproval(ctx context.Context, ref, mode string, timeout time.Duration, by audit.Entry) (ApprovalSetting, error) {
	if err := CheckApproval(mode, timeout); err != nil {
		return ApprovalSetting{}, err
	}
	var out ApprovalSetting
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		id, name, err := lockTenant(ctx, tx, ref)
		if err != nil {
			return err
		}
		var prevMode string
		var prevMs int64
		if err := tx.QueryRow(ctx, "SELECT approval_mode, (extract(epoch FROM approval_timeout) * 1000)::bigint FROM tenants WHERE id = $1", id).Scan(&prevMode, &prevMs); err != nil {
			return err
		}
		prevTimeout := time.Duration(prevMs) * time.Millisecond
		if timeout == 0 {
			timeout = prevTimeout
		}
		if _, err := tx.Exec(ctx, "UPDATE tenants SET approval_mode = $2, approval_timeout = $3::interval WHERE id = $1", id, mode, timeout.String()); err != nil {
			return err
		}
		out = ApprovalSetting{TenantID: id, Tenant: name, Mode: mode, Timeout: timeout.String()}
		e := by
		e.Action, e.Outcome, e.TenantID = "tenant.approval.set", audit.Success, id
		e.Detail = map[string]any{"mode": mode, "timeout": timeout.String(), "previous_mode": prevMode, "previous_timeout": prevTimeout.String()}
		_, err = audit.Record(ctx, tx, e)
		return err
	})
	if err != nil {
		return ApprovalSetting{}, fmt.Errorf("set approval: %w", err)
	}
	return out, nil
}

// Approval returns the tenant's approval setting.
func (s *Store) Approval(ctx context.Context, ref string) (ApprovalSetting, error) {
	t, err := s.Get(ctx, ref)
	if err != nil {
		return ApprovalSetting{}, err
	}
	var out ApprovalSetting
	var ms int64
	if err := s.pool.QueryRow(ctx, "SELECT approval_mode, (extract(epoch FROM approval_timeout) * 1000)::bigint FROM tenants WHERE id = $1", t.ID).
		Scan(&out.Mode, &ms); err != nil {
		return ApprovalSetting{}, fmt.Errorf("approval: %w", err)
	}
	out.TenantID, out.Tenant, out.Timeout = t.ID, t.Name, (time.Duration(ms) * time.Millisecond).String()
	return out, nil
}
