package api

import (
	"errors"
	"net/http"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/tenants"
)

func consentError(err error) error {
	switch {
	case errors.Is(err, tenants.ErrConsentRequired):
		return apierror.New(http.StatusConflict, "tenant_consent_required",
			"no signed remote-support consent is on record; run 'argusctl tenant consent record TENANT --document-id ID --signed-by NAME' first")
	case errors.Is(err, tenants.ErrNoConsent):
		return apierror.New(http.StatusConflict, "tenant_consent_required", "no consent is in force")
	case errors.Is(err, tenants.ErrReasonRequired):
		return apierror.New(http.StatusBadRequest, apierror.CodeReasonRequired, "a reason is required")
	case errors.Is(err, tenants.ErrBadConsent):
		return badRequest(tenants.ErrBadConsent.Error())
	}
	return tenantError(err)
}

type reasonBody struct {
	Reason string `json:"reason"`
}

func (s *Server) recordConsent(w http.ResponseWriter, r *http.Request) {
	var req struct {
		DocumentID string `json:"document_id"`
		SignedBy   string `json:"signed_by"`
		SignedAt   string `json:"signed_at,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	in := tenants.ConsentInput{DocumentID: req.DocumentID, SignedBy: req.SignedBy}
	if req.SignedAt != "" {
		t, err := parseDate(req.SignedAt)
		if err != nil || t.After(time.Now().Add(24*time.Hour)) {
			apierror.Write(w, badRequest("signed_at: a date (2026-01-31) or RFC 3339 time, not in the future"))
			return
		}
		in.SignedAt = t
	}
	t, err := s.Tenants.RecordConsent(r.Context(), r.PathValue("tenant"), in, actor(r))
	if err != nil {
		s.fail(w, r, consentError(err))
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func parseDate(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Parse("2006-01-02", s)
}

func (s *Server) listConsents(w http.ResponseWriter, r *http.Request) {
	list, err := s.Tenants.Consents(r.Context(), r.PathValue("tenant"))
	if err != nil {
		s.fail(w, r, consentError(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"consents": list})
}

func (s *Server) withdrawConsent(w http.ResponseWriter, r *http.Request) {
	var req reasonBody
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	id, ended, err := s.Tenants.WithdrawConsent(r.Context(), r.PathValue("tenant"), req.Reason, actor(r))
	if err != nil {
		s.fail(w, r, consentError(err))
		return
	}
	s.Sessions.AfterEnd(ended...)
	s.writeTenant(w, r, id)
}

func (s *Server) arm(w http.ResponseWriter, r *http.Request) {
	var req reasonBody
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	t, err := s.Tenants.Arm(r.Context(), r.PathValue("tenant"), req.Reason, actor(r))
	if err != nil {
		s.fail(w, r, consentError(err))
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (s *Server) disarm(w http.ResponseWriter, r *http.Request) {
	var req reasonBody
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	id, ended, err := s.Tenants.Disarm(r.Context(), r.PathValue("tenant"), req.Reason, actor(r))
	if err != nil {
		s.fail(w, r, consentError(err))
		return
	}
	s.Sessions.AfterEnd(ended...)
	s.writeTenant(w, r, id)
}

// writeTenant answers with the tenant as it is now, read after the broker
// steps that follow a commit have run: a failure here loses none of them.
func (s *Server) writeTenant(w http.ResponseWriter, r *http.Request, id string) {
	t, err := s.Tenants.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, consentError(err))
		return
	}
	writeJSON(w, http.StatusOK, t)
}
