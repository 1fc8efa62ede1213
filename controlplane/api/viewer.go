package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/tenants"
)

func viewerError(err error) error {
	if errors.Is(err, tenants.ErrViewerTokenNotFound) {
		return apierror.New(http.StatusNotFound, apierror.CodeNotFound, "no such viewer token")
	}
	return tenantError(err)
}

func (s *Server) createViewerToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Description string `json:"description,omitempty"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		apierror.Write(w, err)
		return
	}
	v, err := s.Tenants.CreateViewerToken(r.Context(), r.PathValue("tenant"), req.Description, actor(r))
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

func (s *Server) revokeViewerToken(w http.ResponseWriter, r *http.Request) {
	if err := s.Tenants.RevokeViewerToken(r.Context(), r.PathValue("tenant"), r.PathValue("id"), actor(r)); err != nil {
		s.fail(w, r, viewerError(err))
		return
	}
	// The broker cannot tell which viewer holds which token: all of the
	// tenant's viewers reconnect, and the revoked one cannot.
	if t, err := s.Tenants.Get(r.Context(), r.PathValue("tenant")); err == nil && s.AgentControl != nil {
		s.AgentControl.DisconnectViewers(t.ID)
	}
	writeJSON(w, http.StatusOK, map[string]string{"revoked": r.PathValue("id")})
}

// ViewerInfo tells the status page where and how to subscribe.
type ViewerInfo struct {
	TenantID     string `json:"tenant_id"`
	Tenant       string `json:"tenant"`
	MQTTURL      string `json:"mqtt_url"`
	MQTTUsername string `json:"mqtt_username"`
	Topic        string `json:"topic"`
}

// viewer answers a viewer token with what its page needs; it is the only
// thing a viewer token opens on the API.
func (s *Server) viewer(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		apierror.Write(w, apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer viewer token"))
		return
	}
	tid, err := s.Tenants.AuthenticateViewer(r.Context(), strings.TrimSpace(tok))
	if err != nil {
		apierror.Write(w, apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "unknown or revoked viewer token"))
		return
	}
	t, err := s.Tenants.Get(r.Context(), tid)
	if err != nil {
		s.fail(w, r, tenantError(err))
		return
	}
	writeJSON(w, http.StatusOK, ViewerInfo{
		TenantID: t.ID, Tenant: t.Name, MQTTURL: s.BrowserMQTTURL, MQTTUsername: "viewer:" + t.ID,
		Topic: "argus/v1/status/tenants/" + t.ID + "/remote-support",
	})
}
