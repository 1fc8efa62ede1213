package api

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/tenants"
	"github.com/argus-remote/argus/controlplane/transcript"
	"github.com/argus-remote/argus/controlplane/transcript/collect"
	"github.com/argus-remote/argus/internal/credential"
)

// Codes of the transcript endpoints.
const (
	codeSessionNotFound    = "session_not_found"
	codeTranscriptTooLarge = "transcript_too_large"
)

// transcriptAction is what a transcript download is audited as.
const transcriptAction = "transcript.download"

// SigningKeyInfo is the control plane's public key, which agents pin and
// transcripts are signed with; it is not secret.
type SigningKeyInfo struct {
	Alg   string `json:"alg"`
	KeyID string `json:"key_id"`
	// PublicKey is the raw 32 bytes, base64: what agents are given.
	PublicKey string `json:"public_key"`
	// PEM is the same key as a PEM PUBLIC KEY block, for
	// `argusctl audit verify-transcript --key` and openssl.
	PEM string `json:"pem"`
}

// signingKey answers anyone: a tenant checks transcripts with it, and can
// compare its key_id with the key its agent pinned at enrollment.
func (s *Server) signingKey(w http.ResponseWriter, r *http.Request) {
	if s.SigningKey == nil {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "no signing key configured"))
		return
	}
	pub := s.SigningKey().Public().(ed25519.PublicKey)
	writeJSON(w, http.StatusOK, SigningKeyInfo{
		Alg: "ed25519", KeyID: signing.KeyID(pub), PublicKey: base64.StdEncoding.EncodeToString(pub),
		PEM: string(transcript.PublicKeyPEM(pub)),
	})
}

// operatorTranscript serves any session's transcript to an operator with
// audit:read. Unlike requireScope, every refusal here is audited.
func (s *Server) operatorTranscript(w http.ResponseWriter, r *http.Request) {
	refused := audit.Entry{Actor: "anonymous", ClientIP: clientIP(r)}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.refuseTranscript(w, r, refused, apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer token"))
		return
	}
	p, err := s.Operators.Authenticate(r.Context(), strings.TrimSpace(tok))
	if err != nil {
		if !isAuthRefusal(err) {
			s.Log.Error("authenticate", "err", err)
		}
		s.refuseTranscript(w, r, refused, authError(err))
		return
	}
	by := audit.Entry{Actor: "operator:" + p.OperatorName, OperatorID: p.OperatorID, ClientIP: clientIP(r)}
	if !p.Has(operators.ScopeAuditRead) {
		s.refuseTranscript(w, r, by, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "token lacks the audit:read scope"))
		return
	}
	s.serveTranscript(w, r, by, "", apierror.New(http.StatusNotFound, codeSessionNotFound, "no such session"))
}

// viewerTranscript serves a session's transcript to its tenant's viewer
// token. Another tenant's session is not found, as a session that does
// not exist is: a token learns nothing of other tenants.
func (s *Server) viewerTranscript(w http.ResponseWriter, r *http.Request) {
	refused := audit.Entry{Actor: "anonymous", ClientIP: clientIP(r)}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.refuseTranscript(w, r, refused, apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer viewer token"))
		return
	}
	tok = strings.TrimSpace(tok)
	id, _, perr := credential.Parse(credential.Viewer, tok)
	if perr == nil {
		// The id of a token is public (it finds the row); the audit
		// names who tried even when the secret was wrong or revoked.
		refused.Detail = map[string]any{"viewer_token": id}
	}
	g, err := s.Tenants.AuthenticateToken(r.Context(), tok)
	switch {
	case errors.Is(err, tenants.ErrTokenRevoked), errors.Is(err, tenants.ErrViewerTokenNotFound):
		s.refuseTranscript(w, r, refused, apierror.New(http.StatusUnauthorized, apierror.CodeInvalidToken, "unknown or revoked viewer token"))
		return
	case err != nil:
		s.Log.Error("authenticate tenant token", "err", err)
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "cannot check credentials right now"))
		return
	}
	by := audit.Entry{Actor: "viewer:" + id, TenantID: g.TenantID, ClientIP: clientIP(r)}
	// A transcript is what the view right shows; every token holds it
	// today, and the route asks for it all the same.
	if !g.Has(tenants.RightView) {
		s.refuseTranscript(w, r, by, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "this tenant token may not view"))
		return
	}
	s.serveTranscript(w, r, by, g.TenantID, apierror.New(http.StatusNotFound, apierror.CodeNotFound, "no such session"))
}

// serveTranscript writes the transcript of the path's session, of tenant
// when one is given; notFound is the answer for a session not there.
func (s *Server) serveTranscript(w http.ResponseWriter, r *http.Request, by audit.Entry, tenant string, notFound *apierror.Error) {
	id, ok := input.ID(r.PathValue("session"))
	if !ok {
		s.refuseTranscript(w, r, by, badRequest("session: not a session id"))
		return
	}
	if s.SigningKey == nil {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "no signing key configured"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	t, err := collect.Session(ctx, s.Pool, id, tenant, s.SigningKey())
	switch {
	case errors.Is(err, collect.ErrNotFound):
		s.refuseTranscript(w, r, by, notFound)
		return
	case errors.Is(err, collect.ErrTooLarge):
		s.refuseTranscript(w, r, by, apierror.New(http.StatusRequestEntityTooLarge, codeTranscriptTooLarge, err.Error()))
		return
	case err != nil:
		s.fail(w, r, err)
		return
	}
	// A download is kept as who took which session's transcript; not as
	// an action of the session, which would stretch its span each time.
	by.Action, by.Outcome = transcriptAction, audit.Success
	by.Detail = map[string]any{"session": id, "first_seq": t.FirstSeq, "last_seq": t.LastSeq, "actions": t.Actions}
	actx, acancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer acancel()
	if err := audit.Write(actx, s.Pool, by); err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Disposition", `attachment; filename="transcript-`+id+`.json"`)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, t)
}

// maxRefusedID bounds the session id a refusal keeps.
const maxRefusedID = 128

// refuseTranscript audits a refused download and writes its error. The
// session asked for is kept in detail, not as the entry's session: a
// refusal is not an action of a session someone else may own.
func (s *Server) refuseTranscript(w http.ResponseWriter, r *http.Request, by audit.Entry, e *apierror.Error) {
	asked := r.PathValue("session")
	if len(asked) > maxRefusedID {
		asked = asked[:maxRefusedID]
	}
	detail := map[string]any{"code": e.Code, "session": asked, "path": r.Pattern}
	for k, v := range by.Detail {
		detail[k] = v
	}
	by.Action, by.Outcome, by.Reason, by.Detail = transcriptAction, audit.Denied, e.Message, detail
	// Bounded per source, as the gate's denials are.
	if s.refusalAuditLimit.allow(clientIP(r)) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer cancel()
		if err := audit.Write(ctx, s.Pool, by); err != nil {
			s.Log.Error("audit transcript refusal", "err", err)
		}
	} else {
		s.Log.Warn("transcript download refused (audit rate-limited)", "ip", clientIP(r), "code", e.Code)
	}
	apierror.Write(w, e)
}
