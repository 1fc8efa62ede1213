package api

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/input"
)

// AgentControl acts on an agent's live broker connection.
type AgentControl interface {
	// RevokeAgent drops the agent's credential from the broker and
	// disconnects it, at once.
	RevokeAgent(agentID string)
	// DisconnectViewerTokens ends the viewer connections that
	// authenticated with any of these tenant tokens, at once.
	DisconnectViewerTokens(tokenIDs ...string)
	// DisconnectMonitorTokens ends the monitor connections that
	// authenticated with any of these operator tokens, at once.
	DisconnectMonitorTokens(tokenIDs ...string)
}

func agentError(err error) error {
	switch {
	case errors.Is(err, agents.ErrNotFound):
		return apierror.New(http.StatusNotFound, apierror.CodeAgentNotFound, "no such agent")
	case errors.Is(err, agents.ErrTenantNotFound):
		return apierror.New(http.StatusNotFound, apierror.CodeTenantNotFound, "no such tenant")
	case errors.Is(err, agents.ErrNameTaken):
		return apierror.New(http.StatusConflict, apierror.CodeAgentNameTaken, agents.ErrNameTaken.Error())
	case errors.Is(err, agents.ErrInvalidName):
		return apierror.New(http.StatusBadRequest, apierror.CodeInvalidName, agents.ErrInvalidName.Error())
	case errors.Is(err, agents.ErrAlreadyRevoked):
		return apierror.New(http.StatusConflict, apierror.CodeAgentRevoked, "agent already revoked")
	case errors.Is(err, agents.ErrBadTTL):
		return badRequest(agents.ErrBadTTL.Error())
	case errors.Is(err, agents.ErrReasonRequired):
		return apierror.New(http.StatusBadRequest, apierror.CodeReasonRequired, "a reason is required")
	case errors.Is(err, agents.ErrTokenInvalid):
		return apierror.New(http.StatusUnauthorized, apierror.CodeEnrollmentTokenInvalid, "unknown or malformed enrollment token")
	case errors.Is(err, agents.ErrTokenUsed):
		return apierror.New(http.StatusUnauthorized, apierror.CodeEnrollmentTokenUsed, "enrollment token already used; ask for a new one")
	case errors.Is(err, agents.ErrTokenExpired):
		return apierror.New(http.StatusUnauthorized, apierror.CodeEnrollmentTokenExpired, "enrollment token expired; ask for a new one")
	}
	return err
}

func (s *Server) createEnrollmentToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Tenant string `json:"tenant"`
		Name   string `json:"name"`
		TTL    string `json:"ttl,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			apierror.Write(w, badRequest("ttl: not a duration (like 24h)"))
			return
		}
		ttl = d
	}
	tok, err := s.Agents.CreateEnrollmentToken(r.Context(), req.Tenant, req.Name, ttl, actor(r))
	if err != nil {
		s.fail(w, r, agentError(err))
		return
	}
	writeJSON(w, http.StatusCreated, tok)
}

// EnrollResponse is what an agent receives for its enrollment token.
type EnrollResponse struct {
	agents.Enrollment
	BrokerURL        string `json:"broker_url"`
	SigningPublicKey string `json:"signing_public_key"`
}

// enroll is the one unauthenticated /v1 call: the enrollment token is the
// credential. It is rate-limited per client address.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	if !s.enrollLimit.allow(clientIP(r)) {
		apierror.Write(w, apierror.New(http.StatusTooManyRequests, apierror.CodeRateLimited, "too many enrollment attempts; wait a minute"))
		return
	}
	var req struct {
		Token string `json:"token"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	e, err := s.Agents.Enroll(r.Context(), strings.TrimSpace(req.Token), clientIP(r))
	if err != nil {
		s.fail(w, r, agentError(err))
		return
	}
	s.Log.Info("agent enrolled", "agent", e.AgentID, "tenant", e.Tenant, "name", e.AgentName)
	writeJSON(w, http.StatusCreated, EnrollResponse{Enrollment: e, BrokerURL: s.BrokerURL, SigningPublicKey: s.SigningPublicKey})
}

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request) {
	f := agents.Filter{Tenant: r.URL.Query().Get("tenant")}
	if v := r.URL.Query().Get("stale"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			apierror.Write(w, badRequest("stale: not a positive duration (like 24h)"))
			return
		}
		f.Stale = d
	}
	list, err := s.Agents.List(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for i := range list {
		list[i].Stale = s.agentStale(list[i])
	}
	writeJSON(w, http.StatusOK, map[string]any{"agents": list})
}

func (s *Server) getAgent(w http.ResponseWriter, r *http.Request) {
	a, err := s.Agents.Get(r.Context(), r.PathValue("agent"))
	if err != nil {
		s.fail(w, r, agentError(err))
		return
	}
	a.Stale = s.agentStale(a)
	writeJSON(w, http.StatusOK, a)
}

func (s *Server) agentStale(a agents.Agent) bool {
	return a.Online && s.AgentStale != nil && s.AgentStale(a.ID)
}

func (s *Server) revokeAgent(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reason string `json:"reason"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	id, _ := input.ID(r.PathValue("agent"))
	ended, err := s.Agents.Revoke(r.Context(), id, strings.TrimSpace(req.Reason), actor(r))
	if errors.Is(err, agents.ErrAlreadyRevoked) {
		// A repeated revoke applies the broker side again: the first one's
		// may have been lost after its commit.
		s.Sessions.EndedOnBroker(id)
		s.AgentControl.RevokeAgent(id)
	}
	if err != nil {
		s.fail(w, r, agentError(err))
		return
	}
	// Committed: the broker steps run before anything else can fail.
	s.Sessions.AfterEnd(ended...)
	s.AgentControl.RevokeAgent(id)
	s.Log.Info("agent revoked", "agent", id, "by", principalFrom(r.Context()).OperatorName)
	a, err := s.Agents.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, agentError(err))
		return
	}
	writeJSON(w, http.StatusOK, a)
}
