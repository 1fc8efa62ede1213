// Package apierror is the one place the control plane's JSON error shape
// exists: {"error":{"code":"...","message":"..."}}. Codes are stable and
// machine-readable; messages are for people and may change.
package apierror

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Stable error codes shared by the API and its clients.
const (
	CodeUnauthenticated  = "unauthenticated"
	CodeInvalidToken     = "invalid_token"
	CodeTokenExpired     = "token_expired"
	CodeTokenRevoked     = "token_revoked"
	CodeOperatorDisabled = "operator_disabled"
	CodeForbidden        = "forbidden"
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodePayloadTooLarge  = "payload_too_large"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	CodeRateLimited      = "rate_limited"
	CodeConflict         = "conflict"
	CodeInvalidText      = "invalid_text"

	CodeTenantNotFound         = "tenant_not_found"
	CodeTenantExists           = "tenant_exists"
	CodeAgentNotFound          = "agent_not_found"
	CodeAgentNameTaken         = "agent_name_taken"
	CodeAgentRevoked           = "agent_revoked"
	CodeReasonRequired         = "reason_required"
	CodeInvalidName            = "invalid_name"
	CodeEnrollmentTokenInvalid = "enrollment_token_invalid"
	CodeEnrollmentTokenUsed    = "enrollment_token_used"
	CodeEnrollmentTokenExpired = "enrollment_token_expired"
)

// Error is an API error: an HTTP status, a stable code and a message.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// CommandID names the command an error is about, when the caller
	// needs it to look the command up (completion_not_recorded).
	CommandID string `json:"command_id,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// New returns an API error.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

// Body is the JSON document carrying an error.
type Body struct {
	Error *Error `json:"error"`
}

// Write sends err as the JSON error document. An error that is not an
// *Error is reported as an internal error without its text, which may hold
// details a caller must not see.
func Write(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = New(http.StatusInternalServerError, CodeInternal, "internal error")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(Body{Error: e})
}
