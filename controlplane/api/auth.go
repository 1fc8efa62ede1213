package api

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/operators"
)

// Actions of the API's own refusals: a request without a valid operator
// token, and a valid token without the scope a route needs.
const (
	actionAuthenticate = "api.authenticate"
	actionAuthorize    = "api.authorize"
)

type principalKey struct{}

func principalFrom(ctx context.Context) operators.Principal {
	p, _ := ctx.Value(principalKey{}).(operators.Principal)
	return p
}

// authenticated admits requests bearing a valid operator token and puts the
// Principal in the request context.
func (s *Server) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		if h == "" {
			s.refuseRequest(w, r, operators.Principal{}, actionAuthenticate, apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer token"))
			return
		}
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			s.refuseRequest(w, r, operators.Principal{}, actionAuthenticate, apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "Authorization header is not a Bearer token"))
			return
		}
		p, err := s.Operators.Authenticate(r.Context(), strings.TrimSpace(tok))
		if err != nil {
			if !isAuthRefusal(err) {
				// The store failed, not the token: nothing was refused.
				s.Log.Error("authenticate", "err", err)
				apierror.Write(w, authError(err))
				return
			}
			s.refuseRequest(w, r, p, actionAuthenticate, authError(err))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// requireScope admits an authenticated principal that carries scope.
func (s *Server) requireScope(scope operators.Scope, next http.Handler) http.Handler {
	return s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := principalFrom(r.Context()); !p.Has(scope) {
			s.refuseRequest(w, r, p, actionAuthorize, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "token lacks the "+string(scope)+" scope"))
			return
		}
		next.ServeHTTP(w, r)
	}))
}

// requireAnyScope admits a principal carrying at least one of scopes.
func (s *Server) requireAnyScope(next http.HandlerFunc, scopes ...operators.Scope) http.Handler {
	return s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := principalFrom(r.Context()); !slices.ContainsFunc(scopes, p.Has) {
			s.refuseRequest(w, r, p, actionAuthorize, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "token lacks the required scope"))
			return
		}
		next(w, r)
	}))
}

// refuseRequest audits a refused request, then answers it. The audit is
// bounded per source, as the gate's denials are, so a flood of refused
// requests cannot flood the audit tables; what is skipped is logged.
func (s *Server) refuseRequest(w http.ResponseWriter, r *http.Request, p operators.Principal, action string, e *apierror.Error) {
	if s.refusalAuditLimit.allow(clientIP(r)) {
		by := audit.Entry{
			Actor: "anonymous", OperatorID: p.OperatorID, Action: action, Outcome: audit.Denied, ClientIP: clientIP(r), Reason: e.Message,
			Detail: map[string]any{"code": e.Code, "method": r.Method, "path": r.URL.Path},
		}
		if p.OperatorName != "" {
			by.Actor = "operator:" + p.OperatorName
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer cancel()
		if err := audit.Write(ctx, s.Pool, by); err != nil {
			s.Log.Error("audit refused request", "err", err)
		}
	} else {
		s.Log.Warn("request refused (audit rate-limited)", "ip", clientIP(r), "code", e.Code, "path", r.URL.Path)
	}
	apierror.Write(w, e)
}

func isAuthRefusal(err error) bool {
	for _, e := range []error{operators.ErrMalformed, operators.ErrInvalid, operators.ErrExpired, operators.ErrRevoked, operators.ErrDisabled} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func authError(err error) *apierror.Error {
	switch {
	case errors.Is(err, operators.ErrMalformed):
		return apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "malformed operator token")
	case errors.Is(err, operators.ErrInvalid):
		return apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "unknown operator token")
	case errors.Is(err, operators.ErrExpired):
		return apierror.New(http.StatusUnauthorized, apierror.CodeTokenExpired, "operator token has expired")
	case errors.Is(err, operators.ErrRevoked):
		return apierror.New(http.StatusUnauthorized, apierror.CodeTokenRevoked, "operator token has been revoked")
	case errors.Is(err, operators.ErrDisabled):
		return apierror.New(http.StatusUnauthorized, apierror.CodeOperatorDisabled, "operator is disabled")
	default:
		return apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "cannot check credentials right now")
	}
}
