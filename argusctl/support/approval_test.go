package support_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/support"
)

const waitingID = "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"

// approvalAPI answers an activation with 202 (waiting), then reports it
// pending for polls polls, then as final.
func approvalAPI(t *testing.T, polls int32, final string) *httptest.Server {
	t.Helper()
	var n atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "POST /v1/support/sessions":
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintf(w, `{"session":{"id":%q},"token":"argus_ses_x","approval":{"id":%q,"state":"pending_approval","agent_name":"cam-gw-1",
				"requested_at":"2026-12-02T08:00:00Z","deadline":"2026-12-02T08:10:00Z"}}`, waitingID, waitingID)
		case "GET /v1/support/sessions/" + waitingID + "/approval":
			i := n.Add(1)
			if i <= polls {
				fmt.Fprintf(w, `{"id":%q,"state":"pending_approval","elapsed_ms":%d}`, waitingID, i*1000)
				return
			}
			fmt.Fprint(w, final)
		case "GET /v1/support/sessions/" + waitingID:
			fmt.Fprintf(w, `{"id":%q,"agent_name":"cam-gw-1","tenant":"acme","active":true,"expires_at":"2026-12-02T08:40:00Z"}`, waitingID)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(api.Close)
	return api
}

func TestActivate_WaitsForTheTenantAndReturnsTheOpenedSession(t *testing.T) {
	t.Cleanup(support.SetApprovalPoll(5 * time.Millisecond))
	api := approvalAPI(t, 2, `{"state":"approved","decided_by":"tenant_token:abc","elapsed_ms":3000,"outcome":"opened"}`)
	out, errOut, err := runActivate(t, api.URL)
	require.NoError(t, err)
	assert.Contains(t, errOut, "waiting for acme to approve the session on cam-gw-1")
	assert.Contains(t, errOut, "waiting for approval… 1s elapsed")
	assert.Contains(t, errOut, "approved by tenant_token:abc after 3s")
	assert.Contains(t, out, "session "+waitingID+" active on agent cam-gw-1 (acme)")
}

func TestActivate_ReturnsTheTenantsRefusal(t *testing.T) {
	t.Cleanup(support.SetApprovalPoll(5 * time.Millisecond))
	for final, code := range map[string]string{
		`{"state":"denied","elapsed_ms":4000}`:  "tenant_denied",
		`{"state":"timeout","elapsed_ms":4000}`: "tenant_approval_timeout",
		`{"state":"approved","decided_by":"tenant_token:abc","outcome":"agent_offline","outcome_message":"gone"}`: "agent_offline",
	} {
		t.Run(code, func(t *testing.T) {
			api := approvalAPI(t, 1, final)
			_, _, err := runActivate(t, api.URL)
			var apiErr *apiclient.Error
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, code, apiErr.Code)
		})
	}
}
