package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/reconcile"
)

// AuditRow is one audit_log row as the API lists it.
type AuditRow struct {
	ID         string         `json:"id"`
	OccurredAt time.Time      `json:"occurred_at"`
	Actor      string         `json:"actor"`
	Action     string         `json:"action"`
	Outcome    string         `json:"outcome"`
	TenantID   string         `json:"tenant_id,omitempty"`
	AgentID    string         `json:"agent_id,omitempty"`
	SessionID  string         `json:"session_id,omitempty"`
	ClientIP   string         `json:"client_ip,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Detail     map[string]any `json:"detail"`
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	since := 24 * time.Hour
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			apierror.Write(w, badRequest("since: not a positive duration (like 24h)"))
			return
		}
		since = d
	}
	limit := 200
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 5000 {
			apierror.Write(w, badRequest("limit: 1..5000"))
			return
		}
		limit = n
	}
	tenant := q.Get("tenant")
	if tenant != "" {
		if _, err := uuid.Parse(tenant); err != nil {
			t, err := s.Tenants.Get(r.Context(), tenant)
			if err != nil {
				s.fail(w, r, tenantError(err))
				return
			}
			tenant = t.ID
		}
	}
	session := q.Get("session")
	if session != "" {
		if _, err := uuid.Parse(session); err != nil {
			apierror.Write(w, badRequest("session: not a session id"))
			return
		}
	}
	rows, err := s.Pool.Query(r.Context(), `
		SELECT id, occurred_at, actor, action, outcome, COALESCE(tenant_id::text, ''), COALESCE(agent_id::text, ''),
		       COALESCE(session_id::text, ''), COALESCE(host(client_ip), ''), COALESCE(reason, ''), detail
		FROM audit_log
		WHERE occurred_at >= now() - $1::interval AND ($2 = '' OR tenant_id::text = $2) AND ($3 = '' OR session_id::text = $3)
		ORDER BY occurred_at DESC LIMIT $4`, since.String(), tenant, session, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (AuditRow, error) {
		var a AuditRow
		err := row.Scan(&a.ID, &a.OccurredAt, &a.Actor, &a.Action, &a.Outcome, &a.TenantID, &a.AgentID, &a.SessionID, &a.ClientIP, &a.Reason, &a.Detail)
		return a, err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": list})
}

// verifyAudit reconciles a window on demand; the run is itself audited
// and records the chain head it reached, which the response shows.
func (s *Server) verifyAudit(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Since string `json:"since,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	since := 24 * time.Hour
	if req.Since != "" {
		d, err := time.ParseDuration(req.Since)
		if err != nil || d <= 0 || d > 366*24*time.Hour {
			apierror.Write(w, badRequest("since: a positive duration up to a year (like 24h)"))
			return
		}
		since = d
	}
	to := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	report, err := reconcile.Run(ctx, s.Pool, to.Add(-since), to)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := reconcile.Record(ctx, s.Pool, report, actor(r), reconcile.Source{Kind: reconcile.KindAPI, Node: s.Node}); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, report)
}
