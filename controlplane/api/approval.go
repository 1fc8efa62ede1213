package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/controlplane/tenants"
)

// Codes of the approval setting.
const (
	codeBadApprovalMode    = "invalid_approval_mode"
	codeBadApprovalTimeout = "invalid_approval_timeout"
)

// maxApprovalBody bounds a setting's or a decision's body.
const maxApprovalBody = 4 << 10

// setApproval sets a tenant's approval mode. The bounds are checked
// before the database is touched; every refusal is audited.
func (s *Server) setApproval(w http.ResponseWriter, r *http.Request) {
	const action = "tenant.approval.set"
	by := actor(r)
	by.Action = action
	ref := r.PathValue("tenant")
	refuse := func(e *apierror.Error) {
		d := by
		d.Outcome = audit.Denied
		if len(ref) > 64 {
			ref = ref[:64]
		}
		d.Detail = map[string]any{"code": e.Code, "tenant": ref}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer cancel()
		if err := audit.Write(ctx, s.Pool, d); err != nil {
			s.Log.Error("audit approval setting refusal", "err", err)
			apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "the refusal could not be recorded; try again"))
			return
		}
		apierror.Write(w, e)
	}
	var req struct {
		Mode    string `json:"mode"`
		Timeout string `json:"timeout,omitempty"`
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxApprovalBody)
	if err := decodeJSON(w, r, &req); err != nil {
		var ae *apierror.Error
		if errors.As(err, &ae) {
			refuse(ae)
			return
		}
		refuse(badRequest("unreadable body"))
		return
	}
	var timeout time.Duration
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil {
			refuse(apierror.New(http.StatusBadRequest, codeBadApprovalTimeout, "timeout: not a duration (like 10m)"))
			return
		}
		if d == 0 {
			d = -1 // zero means "keep" only when left out
		}
		timeout = d
	}
	switch err := tenants.CheckApproval(req.Mode, timeout); {
	case errors.Is(err, tenants.ErrBadApprovalMode):
		refuse(apierror.New(http.StatusBadRequest, codeBadApprovalMode, err.Error()))
		return
	case errors.Is(err, tenants.ErrBadApprovalTimeout):
		refuse(apierror.New(http.StatusBadRequest, codeBadApprovalTimeout, err.Error()))
		return
	}
	set, err := s.Tenants.SetApproval(r.Context(), ref, req.Mode, timeout, by)
	if errors.Is(err, tenants.ErrNotFound) {
		refuse(apierror.New(http.StatusNotFound, apierror.CodeTenantNotFound, "no such tenant"))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.Log.Info("tenant approval mode set", "tenant", set.Tenant, "mode", set.Mode, "timeout", set.Timeout)
	writeJSON(w, http.StatusOK, set)
}

func (s *Server) getApproval(w http.ResponseWriter, r *http.Request) {
	set, err := s.Tenants.Approval(r.Context(), r.PathValue("tenant"))
	if err != nil {
		s.fail(w, r, tenantError(err))
		return
	}
	writeJSON(w, http.StatusOK, set)
}

// supportApproval tells an operator where an activation that waits for
// its tenant stands: argusctl polls it, since the wait may outlast any
// one request.
func (s *Server) supportApproval(w http.ResponseWriter, r *http.Request) {
	a, err := s.Sessions.ApprovalOf(r.Context(), r.PathValue("session"))
	if err != nil {
		s.fail(w, r, sessionError(err))
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// ActivatePendingResponse answers an activation that waits for its
// tenant's approval: the session's id and token (shown once, usable once
// the session opens) and where to follow it.
type ActivatePendingResponse struct {
	Session  sessions.Session  `json:"session"`
	Token    string            `json:"token"`
	Approval sessions.Approval `json:"approval"`
	Poll     string            `json:"poll"`
}

// activateWaiting runs an activation whose tenant may require approval:
// it answers as soon as the activation waits (202) or ends (as before),
// and a waiting activation goes on, past the request, until decided.
func (s *Server) activateWaiting(w http.ResponseWriter, r *http.Request, req sessions.ActivateRequest) {
	type result struct {
		sess  sessions.Session
		token string
		err   error
	}
	pending := make(chan ActivatePendingResponse, 1)
	done := make(chan result, 1)
	// Called in the activation's goroutine, before it returns.
	var waitedID string
	var waiting atomic.Bool
	req.OnPending = func(a sessions.Approval, token string) {
		waitedID = a.ID
		waiting.Store(true)
		pending <- ActivatePendingResponse{
			Session: sessions.Session{ID: a.ID, TenantID: a.TenantID, AgentID: a.AgentID, OperatorID: a.OperatorID,
				Operator: a.Operator, Reason: a.Reason, ClientIP: req.ClientIP, CreatedAt: a.RequestedAt},
			Token: token, Approval: a, Poll: "/v1/support/sessions/" + a.ID + "/approval",
		}
	}
	// Until it waits, the activation is the request's, cancelled with it
	// as before. Once it waits it is the tenant's: it goes on after the
	// 202, and the operator withdraws it with a deactivation.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stop := context.AfterFunc(r.Context(), func() {
		if !waiting.Load() {
			cancel()
		}
	})
	go func() {
		defer cancel()
		defer stop()
		sess, token, err := s.Sessions.Activate(ctx, req)
		if waitedID != "" {
			s.recordOutcome(ctx, waitedID, err)
		}
		done <- result{sess, token, err}
	}()
	select {
	case p := <-pending:
		writeJSON(w, http.StatusAccepted, p)
	case res := <-done:
		if res.err != nil {
			s.fail(w, r, sessionError(res.err))
			return
		}
		writeJSON(w, http.StatusCreated, ActivateResponse{Session: res.sess, Token: res.token})
	}
}

// recordOutcome writes what became of an activation that waited, for
// whoever polls it.
func (s *Server) recordOutcome(ctx context.Context, id string, err error) {
	outcome, msg := sessions.OutcomeOpened, ""
	var rf *sessions.Refusal
	switch {
	case errors.As(err, &rf):
		outcome, msg = rf.Code, rf.Message
	case err != nil:
		outcome, msg = apierror.CodeInternal, "the activation failed on the server"
	}
	if werr := s.Sessions.SetApprovalOutcome(ctx, id, outcome, msg); werr != nil {
		s.Log.Error("record approval outcome", "session", id, "err", werr)
	}
}

// viewerApprovals lists the activations waiting for the token's tenant.
func (s *Server) viewerApprovals(w http.ResponseWriter, r *http.Request) {
	g, e, err := s.tenantAuth(r, "tenant.approvals")
	if err != nil {
		apierror.Write(w, err)
		return
	}
	if !g.Has(tenants.RightView) {
		apierror.Write(w, s.refuseTenant(r, e, true, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "this tenant token may not view")))
		return
	}
	list, err := s.Sessions.PendingApprovals(r.Context(), g.TenantID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if list == nil {
		list = []sessions.Approval{}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"approvals": list})
}

func (s *Server) viewerApprove(w http.ResponseWriter, r *http.Request) { s.viewerDecide(w, r, true) }
func (s *Server) viewerDeny(w http.ResponseWriter, r *http.Request)    { s.viewerDecide(w, r, false) }

// viewerDecide approves or denies one of the tenant's waiting
// activations, for a token with the approve right, audited with the
// token's id as the actor. Every refusal is audited.
func (s *Server) viewerDecide(w http.ResponseWriter, r *http.Request, approve bool) {
	action := "support.approval.deny"
	if approve {
		action = "support.approval.approve"
	}
	var req struct {
		Note string `json:"note,omitempty"`
	}
	g, e, id, refuse, ok := s.viewerSessionCall(w, r, action, maxApprovalBody, &req)
	if !ok {
		return
	}
	req.Note = strings.TrimSpace(req.Note)
	if ierr := input.Text("note", req.Note, sessions.MaxReason); ierr != nil {
		refuse(http.StatusBadRequest, ierr.Code, ierr.Message)
		return
	}
	if !g.Has(tenants.RightApprove) {
		refuse(http.StatusForbidden, apierror.CodeForbidden, "this tenant token may not decide activations (it lacks the approve right)")
		return
	}
	by := e
	by.Detail = nil
	a, err := s.Sessions.Decide(r.Context(), g.TenantID, id, approve, req.Note, by)
	var rf *sessions.Refusal
	if errors.As(err, &rf) {
		refuse(rf.Status, rf.Code, rf.Message)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// UnopenedSession is what GET /v1/support/sessions/{id} says of an
// activation that waited for its tenant and has no session (yet): its
// state is the approval's (pending_approval, denied, timeout, withdrawn,
// or approved while the session opens).
type UnopenedSession struct {
	ID        string            `json:"id"`
	TenantID  string            `json:"tenant_id"`
	AgentID   string            `json:"agent_id"`
	AgentName string            `json:"agent_name"`
	Operator  string            `json:"operator"`
	Reason    string            `json:"reason"`
	CreatedAt time.Time         `json:"created_at"`
	State     string            `json:"state"`
	Active    bool              `json:"active"`
	Approval  sessions.Approval `json:"approval"`
}

func unopened(a sessions.Approval) UnopenedSession {
	return UnopenedSession{ID: a.ID, TenantID: a.TenantID, AgentID: a.AgentID, AgentName: a.AgentName, Operator: a.Operator,
		Reason: a.Reason, CreatedAt: a.RequestedAt, State: a.State, Approval: a}
}
