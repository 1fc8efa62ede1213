package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/operators"
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
			apierror.Write(w, apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer token"))
			return
		}
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			apierror.Write(w, apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "Authorization header is not a Bearer token"))
			return
		}
		p, err := s.Operators.Authenticate(r.Context(), strings.TrimSpace(tok))
		if err != nil {
			apierror.Write(w, authError(err))
			if !isAuthRefusal(err) {
				s.Log.Error("authenticate", "err", err)
			}
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// requireScope admits an authenticated principal that carries scope.
func (s *Server) requireScope(scope operators.Scope, next http.Handler) http.Handler {
	return s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !principalFrom(r.Context()).Has(scope) {
			apierror.Write(w, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "token lacks the "+string(scope)+" scope"))
			return
		}
		next.ServeHTTP(w, r)
	}))
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
