package api

import (
	"errors"
	"net/http"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/operators"
)

// maxTokenDescription bounds what a token's description may hold.
const maxTokenDescription = 256

func operatorError(err error) error {
	switch {
	case errors.Is(err, operators.ErrNotFound):
		return apierror.New(http.StatusNotFound, apierror.CodeNotFound, "no such operator")
	case errors.Is(err, operators.ErrTokenNotFound):
		return apierror.New(http.StatusNotFound, apierror.CodeNotFound, "no such token for this operator")
	case errors.Is(err, operators.ErrBadTTL):
		return badRequest("expires_in: a positive duration (like 720h)")
	}
	return err
}

// createOperatorToken mints a token for an existing operator: the way a
// lost token is replaced, or a token with other scopes or a shorter life
// is handed out.
func (s *Server) createOperatorToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Scopes      []string `json:"scopes"`
		Description string   `json:"description,omitempty"`
		// ExpiresIn is a Go duration ("720h"); empty means no expiry.
		ExpiresIn string `json:"expires_in,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	scopes, err := operators.ParseScopes(req.Scopes)
	if err != nil {
		apierror.Write(w, badRequest("scopes: "+err.Error()))
		return
	}
	if len([]rune(req.Description)) > maxTokenDescription {
		apierror.Write(w, apierror.New(http.StatusBadRequest, input.CodeTooLong, "description: at most 256 characters"))
		return
	}
	var ttl time.Duration
	if req.ExpiresIn != "" {
		if ttl, err = time.ParseDuration(req.ExpiresIn); err != nil || ttl <= 0 {
			apierror.Write(w, badRequest("expires_in: a positive duration (like 720h)"))
			return
		}
	}
	info, plain, err := s.Operators.CreateToken(r.Context(), r.PathValue("operator"),
		operators.NewToken{Scopes: scopes, Description: req.Description, TTL: ttl}, actor(r))
	if err != nil {
		s.fail(w, r, operatorError(err))
		return
	}
	writeJSON(w, http.StatusCreated, struct {
		operators.TokenInfo
		Token string `json:"token"`
	}{info, plain})
}

func (s *Server) listOperatorTokens(w http.ResponseWriter, r *http.Request) {
	list, err := s.Operators.Tokens(r.Context(), r.PathValue("operator"))
	if err != nil {
		s.fail(w, r, operatorError(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": list})
}

// revokeOperatorToken revokes a token: the next request bearing it is
// refused, and any monitor connection it opened on this node's broker is
// dropped before the answer.
func (s *Server) revokeOperatorToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Operators.RevokeToken(r.Context(), r.PathValue("operator"), id, actor(r)); err != nil {
		s.fail(w, r, operatorError(err))
		return
	}
	if s.AgentControl != nil {
		s.AgentControl.DisconnectMonitorTokens(id)
	}
	writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
}

func (s *Server) disableOperator(w http.ResponseWriter, r *http.Request) { s.setDisabled(w, r, true) }
func (s *Server) enableOperator(w http.ResponseWriter, r *http.Request)  { s.setDisabled(w, r, false) }

// setDisabled disables or enables an operator. Disabling refuses every
// one of its tokens from the answer on and drops its monitor connections;
// an operator cannot disable itself, so the last administrator cannot
// lock everyone out by mistake.
func (s *Server) setDisabled(w http.ResponseWriter, r *http.Request, disabled bool) {
	name := r.PathValue("operator")
	if disabled && principalFrom(r.Context()).OperatorName == name {
		apierror.Write(w, apierror.New(http.StatusConflict, apierror.CodeConflict, "an operator cannot disable itself"))
		return
	}
	ids, err := s.Operators.SetDisabled(r.Context(), name, disabled, actor(r))
	if err != nil {
		s.fail(w, r, operatorError(err))
		return
	}
	if disabled && s.AgentControl != nil {
		s.AgentControl.DisconnectMonitorTokens(ids...)
	}
	writeJSON(w, http.StatusOK, map[string]any{"operator": name, "disabled": disabled})
}
