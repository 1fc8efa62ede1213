package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/topics"
)

func viewerError(err error) error {
	switch {
	case errors.Is(err, tenants.ErrViewerTokenNotFound):
		return apierror.New(http.StatusNotFound, apierror.CodeNotFound, "no such tenant token")
	case errors.Is(err, tenants.ErrBadRights):
		return badRequest(tenants.ErrBadRights.Error())
	case errors.Is(err, tenants.ErrBadDescription):
		return badRequest(tenants.ErrBadDescription.Error())
	}
	return tenantError(err)
}

// createViewerToken mints a view-only token: the viewer-tokens route,
// kept as it was before tokens had rights.
func (s *Server) createViewerToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Description string `json:"description,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	s.mintTenantToken(w, r, req.Description, []string{tenants.RightView})
}

// createTenantToken mints a tenant token with rights (view alone when
// none are asked for).
func (s *Server) createTenantToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Description string   `json:"description,omitempty"`
		Rights      []string `json:"rights,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	s.mintTenantToken(w, r, req.Description, req.Rights)
}

func (s *Server) mintTenantToken(w http.ResponseWriter, r *http.Request, description string, rights []string) {
	v, err := s.Tenants.CreateViewerToken(r.Context(), r.PathValue("tenant"), description, rights, actor(r))
	if err != nil {
		s.fail(w, r, viewerError(err))
		return
	}
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) listViewerTokens(w http.ResponseWriter, r *http.Request) {
	list, err := s.Tenants.ViewerTokens(r.Context(), r.PathValue("tenant"))
	if err != nil {
		s.fail(w, r, viewerError(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"viewer_tokens": list})
}

func (s *Server) listTenantTokens(w http.ResponseWriter, r *http.Request) {
	list, err := s.Tenants.ViewerTokens(r.Context(), r.PathValue("tenant"))
	if err != nil {
		s.fail(w, r, viewerError(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": list})
}

func (s *Server) revokeViewerToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Tenants.RevokeViewerToken(r.Context(), r.PathValue("tenant"), id, actor(r)); err != nil {
		s.fail(w, r, viewerError(err))
		return
	}
	// Exactly the connections this token opened end now; the tenant's
	// other viewers stay.
	if s.AgentControl != nil {
		s.AgentControl.DisconnectViewerTokens(id)
	}
	writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
}

// ViewerInfo tells the status page where and how to subscribe, and what
// its token may do.
type ViewerInfo struct {
	TenantID     string   `json:"tenant_id"`
	Tenant       string   `json:"tenant"`
	TokenID      string   `json:"token_id"`
	Rights       []string `json:"rights"`
	MQTTURL      string   `json:"mqtt_url"`
	MQTTUsername string   `json:"mqtt_username"`
	Topic        string   `json:"topic"`
	FeedTopic    string   `json:"feed_topic"`
}

// tenantAuditPerMinute bounds, per source address, the refusals of requests
// with no valid tenant token that are audited: enough for people, too
// few for a flood to fill the audit tables.
const tenantAuditPerMinute = 60

// tenantAuth authenticates the request's tenant token (Authorization:
// Bearer, never a cookie: a page of another origin cannot send it). A
// refusal is audited under action as it is returned.
func (s *Server) tenantAuth(r *http.Request, action string) (tenants.TokenGrant, audit.Entry, error) {
	e := audit.Entry{Actor: "anonymous", Action: action, ClientIP: clientIP(r)}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return tenants.TokenGrant{}, e, s.refuseTenant(r, e, false,
			apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer tenant token"))
	}
	tok = strings.TrimSpace(tok)
	if id := tenants.TokenID(tok); id != "" {
		e.Actor = "tenant_token:" + id
	}
	g, err := s.Tenants.AuthenticateToken(r.Context(), tok)
	switch {
	case errors.Is(err, tenants.ErrTokenRevoked):
		return g, e, s.refuseTenant(r, e, false, apierror.New(http.StatusUnauthorized, apierror.CodeTokenRevoked, "the tenant token has been revoked"))
	case errors.Is(err, tenants.ErrViewerTokenNotFound):
		return g, e, s.refuseTenant(r, e, false, apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "unknown tenant token"))
	case err != nil:
		s.Log.Error("authenticate tenant token", "err", err)
		return g, e, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "cannot check credentials right now")
	}
	e.TenantID = g.TenantID
	return g, e, nil
}

// refuseTenant audits a refused tenant-token request and returns the
// refusal, or unavailable when it could not be audited: nothing is
// refused unrecorded. Refusals without a live token are audited up to a
// bound per source (known means a live token made the request).
func (s *Server) refuseTenant(r *http.Request, e audit.Entry, known bool, refusal *apierror.Error) error {
	if !known && !s.tenantAuditLimit.allow(clientIP(r)) {
		s.Log.Warn("tenant token request refused (audit rate-limited)", "ip", clientIP(r), "code", refusal.Code)
		return refusal
	}
	e.Outcome = audit.Denied
	detail := map[string]any{"code": refusal.Code, "method": r.Method, "path": r.URL.Path}
	for k, v := range e.Detail {
		detail[k] = v
	}
	e.Detail = detail
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	if err := audit.Write(ctx, s.Pool, e); err != nil {
		s.Log.Error("audit tenant token refusal", "err", err)
		return apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "the refusal could not be recorded; try again")
	}
	return refusal
}

// viewer answers a tenant token with what its page needs.
func (s *Server) viewer(w http.ResponseWriter, r *http.Request) {
	g, _, err := s.tenantAuth(r, "tenant.viewer")
	if err != nil {
		apierror.Write(w, err)
		return
	}
	t, err := s.Tenants.Get(r.Context(), g.TenantID)
	if err != nil {
		s.fail(w, r, tenantError(err))
		return
	}
	tid, err := topics.ParseTenantID(t.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ViewerInfo{
		TenantID: t.ID, Tenant: t.Name, TokenID: g.TokenID, Rights: g.Rights,
		MQTTURL: s.BrowserMQTTURL, MQTTUsername: "viewer:" + t.ID,
		Topic: tid.RemoteSupport(), FeedTopic: tid.CommandFeed(),
	})
}

// viewerSessionCall starts a tenant token's call on one of its sessions:
// it authenticates the token, takes the session id from the path and
// reads the body, at most limit bytes, into body. Every refusal is
// audited under action, and ok is false then; refuse audits and answers
// the caller's own refusals the same way.
func (s *Server) viewerSessionCall(w http.ResponseWriter, r *http.Request, action string, limit int64, body any) (
	g tenants.TokenGrant, e audit.Entry, id string, refuse func(status int, code, msg string), ok bool) {
	g, e, err := s.tenantAuth(r, action)
	if err != nil {
		apierror.Write(w, err)
		return g, e, "", nil, false
	}
	refuse = func(status int, code, msg string) {
		apierror.Write(w, s.refuseTenant(r, e, true, apierror.New(status, code, msg)))
	}
	raw := r.PathValue("session")
	id, valid := input.ID(raw)
	if !valid {
		if len(raw) > 64 {
			raw = raw[:64]
		}
		e.Detail = map[string]any{"session": raw}
		refuse(http.StatusNotFound, "session_not_found", "no such session")
		return g, e, "", nil, false
	}
	// The session is named in the detail until it is known to be this
	// tenant's: another tenant's session is never told apart from none.
	e.Detail = map[string]any{"session": id}
	if r.ContentLength != 0 {
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		if err := decodeJSON(w, r, body); err != nil {
			var ae *apierror.Error
			switch {
			case errors.As(err, &ae) && ae.Code == apierror.CodePayloadTooLarge:
				refuse(http.StatusRequestEntityTooLarge, apierror.CodePayloadTooLarge, fmt.Sprintf("request body over %d KiB", limit>>10))
			case errors.As(err, &ae):
				refuse(ae.Status, ae.Code, ae.Message)
			default:
				refuse(http.StatusBadRequest, apierror.CodeBadRequest, "unreadable body")
			}
			return g, e, "", nil, false
		}
	}
	return g, e, id, refuse, true
}

// maxEndBody bounds what ending a session from the tenant's page may
// send: a short reason.
const maxEndBody = 4 << 10

// viewerEndSession ends one of the tenant's live sessions for a tenant
// token with the end right, exactly as a deactivation does, with end
// reason tenant_ended and the token as the actor.
func (s *Server) viewerEndSession(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reason string `json:"reason,omitempty"`
	}
	g, e, id, refuse, ok := s.viewerSessionCall(w, r, "support.session.end", maxEndBody, &req)
	if !ok {
		return
	}
	if ierr := input.Text("reason", req.Reason, sessions.MaxReason); ierr != nil {
		refuse(http.StatusBadRequest, ierr.Code, ierr.Message)
		return
	}
	if !g.Has(tenants.RightEnd) {
		refuse(http.StatusForbidden, apierror.CodeForbidden, "this tenant token may not end sessions (it lacks the end right)")
		return
	}
	sess, err := s.Sessions.Get(r.Context(), id)
	var rf *sessions.Refusal
	if errors.As(err, &rf) || (err == nil && sess.TenantID != g.TenantID) {
		refuse(http.StatusNotFound, "session_not_found", "no such session")
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	e.SessionID, e.AgentID, e.Detail = sess.ID, sess.AgentID, nil
	if sess.EndedAt != nil {
		refuse(http.StatusConflict, "session_ended", "the session has already ended")
		return
	}
	by := e
	by.Reason = req.Reason
	if _, err := s.Sessions.End(r.Context(), sess.ID, sessions.EndTenantEnded, by); err != nil {
		if errors.Is(err, sessions.ErrEnded) {
			refuse(http.StatusConflict, "session_ended", "the session has already ended")
			return
		}
		s.fail(w, r, err)
		return
	}
	s.Log.Info("session ended by the tenant", "session", sess.ID, "token", g.TokenID)
	sess, err = s.Sessions.Get(r.Context(), sess.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"session_id": sess.ID, "ended_at": sess.EndedAt, "end_reason": sess.EndReason})
}
