package api

import (
	"errors"
	"net/http"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/tenants"
)

func tenantError(err error) error {
	switch {
	case errors.Is(err, tenants.ErrNotFound):
		return apierror.New(http.StatusNotFound, apierror.CodeTenantNotFound, "no such tenant")
	case errors.Is(err, tenants.ErrExists):
		return apierror.New(http.StatusConflict, apierror.CodeTenantExists, "a tenant of that name exists")
	case errors.Is(err, tenants.ErrInvalidName):
		return apierror.New(http.StatusBadRequest, apierror.CodeInvalidName, tenants.ErrInvalidName.Error())
	}
	return err
}

func (s *Server) createTenant(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	t, err := s.Tenants.Create(r.Context(), req.Name, actor(r))
	if err != nil {
		s.fail(w, r, tenantError(err))
		return
	}
	if s.Sessions != nil {
		s.Sessions.PublishTenant(t.ID)
	}
	writeJSON(w, http.StatusCreated, t)
}

func (s *Server) listTenants(w http.ResponseWriter, r *http.Request) {
	list, err := s.Tenants.List(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tenants": list})
}

func (s *Server) getTenant(w http.ResponseWriter, r *http.Request) {
	t, err := s.Tenants.Get(r.Context(), r.PathValue("tenant"))
	if err != nil {
		s.fail(w, r, tenantError(err))
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// fail writes err; an unexpected one is logged here, once, and reported
// without its text.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *apierror.Error
	if !errors.As(err, &apiErr) {
		s.Log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	apierror.Write(w, err)
}
