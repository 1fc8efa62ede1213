package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/sessions"
	"github.com/argus-remote/argus/patch"
)

// refuseBody audits a support request refused for its body: past the
// gate, no refusal goes unrecorded.
func (s *Server) refuseBody(r *http.Request, action string, err error) error {
	var e *apierror.Error
	if !errors.As(err, &e) {
		return err
	}
	by := actor(r)
	by.ClientIP = gateIP(r)
	by.Action, by.SessionID = action, r.PathValue("session")
	return sessionError(s.Sessions.Refuse(r.Context(), by, e.Status, e.Code, e.Message))
}

func sessionError(err error) error {
	var r *sessions.Refusal
	if errors.As(err, &r) {
		e := apierror.New(r.Status, r.Code, r.Message)
		e.CommandID = r.CommandID
		return e
	}
	if errors.Is(err, sessions.ErrEnded) {
		return apierror.New(http.StatusConflict, "session_ended", "the session has already ended")
	}
	return err
}

// ActivateResponse carries the session and its token, shown once.
type ActivateResponse struct {
	Session sessions.Session `json:"session"`
	Token   string           `json:"token"`
}

func (s *Server) activate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Tenant string `json:"tenant"`
		Agent  string `json:"agent"`
		Reason string `json:"reason"`
		TTL    string `json:"ttl,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, s.refuseBody(r, "support.activate", err))
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		// Only an absent ttl means the default: zero or less is refused,
		// and audited as every refusal past the gate is.
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			s.fail(w, r, s.refuseActivation(r, req.Tenant, req.Agent, req.Reason, req.TTL, apierror.CodeBadRequest, "ttl: not a duration (like 30m)"))
			return
		}
		if d <= 0 {
			s.fail(w, r, s.refuseActivation(r, req.Tenant, req.Agent, req.Reason, req.TTL, "ttl_too_short",
				fmt.Sprintf("ttl %v is not positive; leave ttl out for the default %v", d, sessions.DefaultTTL)))
			return
		}
		ttl = d
	}
	p := principalFrom(r.Context())
	s.activateWaiting(w, r, sessions.ActivateRequest{
		Tenant: req.Tenant, Agent: req.Agent, Reason: strings.TrimSpace(req.Reason), TTL: ttl,
		OperatorID: p.OperatorID, Operator: p.OperatorName, ClientIP: gateIP(r),
	})
}

// refuseActivation audits an activation refused for its ttl before it
// reached the manager, and returns the refusal.
func (s *Server) refuseActivation(r *http.Request, tenant, agent, reason, ttl, code, message string) error {
	by := actor(r)
	by.ClientIP = gateIP(r)
	by.Action, by.Reason = "support.activate", strings.TrimSpace(reason)
	by.Detail = map[string]any{"tenant": tenant, "ttl": ttl}
	if id, ok := input.ID(agent); ok {
		by.AgentID = id
	} else if agent != "" {
		by.Detail["agent"] = agent
	}
	return sessionError(s.Sessions.Refuse(r.Context(), by, http.StatusBadRequest, code, message))
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	list, err := s.Sessions.List(r.Context(), r.URL.Query().Get("active") == "true")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sessions": list})
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	sess, err := s.Sessions.Get(r.Context(), r.PathValue("session"))
	var rf *sessions.Refusal
	if errors.As(err, &rf) && rf.Code == "session_not_found" {
		// Never opened: perhaps it waits (or waited) for its tenant.
		if a, aerr := s.Sessions.ApprovalOf(r.Context(), r.PathValue("session")); aerr == nil {
			writeJSON(w, http.StatusOK, unopened(a))
			return
		}
	}
	if err != nil {
		s.fail(w, r, sessionError(err))
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

func (s *Server) deactivate(w http.ResponseWriter, r *http.Request) {
	sess, err := s.Sessions.Get(r.Context(), r.PathValue("session"))
	var rf *sessions.Refusal
	if errors.As(err, &rf) && rf.Code == "session_not_found" {
		// Not opened yet: perhaps waiting for its tenant's approval.
		if a, werr := s.Sessions.Withdraw(r.Context(), r.PathValue("session"), actor(r)); !errors.As(werr, &rf) {
			if werr != nil {
				s.fail(w, r, sessionError(werr))
				return
			}
			writeJSON(w, http.StatusOK, a)
			return
		}
	}
	if err != nil {
		s.fail(w, r, sessionError(err))
		return
	}
	if _, err := s.Sessions.End(r.Context(), sess.ID, sessions.EndDeactivated, actor(r)); err != nil {
		s.fail(w, r, sessionError(err))
		return
	}
	sess, err = s.Sessions.Get(r.Context(), sess.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

func (s *Server) command(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string          `json:"name"`
		Args json.RawMessage `json:"args,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, s.refuseBody(r, "support.command", err))
		return
	}
	by := actor(r)
	by.ClientIP = gateIP(r)
	res, err := s.Sessions.Command(r.Context(), sessions.CommandRequest{
		SessionID: r.PathValue("session"), Token: strings.TrimSpace(r.Header.Get("X-Argus-Session-Token")),
		Name: req.Name, Args: req.Args, By: by,
	})
	if err != nil {
		var refusal *sessions.Refusal
		if errors.As(err, &refusal) && refusal.Code == "agent_timeout" {
			apierror.Write(w, sessionError(err))
			return
		}
		s.fail(w, r, sessionError(err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) applyPatch(w http.ResponseWriter, r *http.Request) {
	// A bundle is at most patch.MaxBundle; one byte more tells us it is over.
	body, err := io.ReadAll(io.LimitReader(r.Body, patch.MaxBundle+1))
	if err != nil {
		s.fail(w, r, s.refuseBody(r, "support.patch", badRequest("reading the bundle: "+err.Error())))
		return
	}
	by := actor(r)
	by.ClientIP = gateIP(r)
	res, err := s.Sessions.ApplyPatch(r.Context(), sessions.PatchRequest{
		SessionID: r.PathValue("session"), Token: strings.TrimSpace(r.Header.Get("X-Argus-Session-Token")),
		Bundle: body, By: by,
	})
	if err != nil {
		s.fail(w, r, sessionError(err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}
