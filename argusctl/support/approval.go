package support

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// approval is an activation waiting for (or decided by) its tenant.
type approval struct {
	ID          string     `json:"id"`
	State       string     `json:"state"`
	AgentName   string     `json:"agent_name"`
	RequestedAt time.Time  `json:"requested_at"`
	Deadline    time.Time  `json:"deadline"`
	DecidedAt   *time.Time `json:"decided_at,omitempty"`
	DecidedBy   string     `json:"decided_by,omitempty"`
	Outcome     string     `json:"outcome,omitempty"`
	OutcomeText string     `json:"outcome_message,omitempty"`
	ElapsedMs   int64      `json:"elapsed_ms"`
}

// approvalPoll is how often argusctl asks where a waiting activation
// stands: each ask is one short request, so the wait is bounded by the
// tenant's timeout, never by the HTTP client's.
var approvalPoll = time.Second

// decidedGrace is how long argusctl waits for the outcome of an approved
// activation (its agent's acknowledgement) before it stops asking.
const decidedGrace = 2 * time.Minute

// awaitApproval follows an activation that waits for its tenant until it
// is decided, showing the elapsed time, and returns the opened session.
// Interrupted, it withdraws the activation.
func awaitApproval(ctx context.Context, f *cmdutil.Factory, c *apiclient.Client, a approval, tenant string) (apiclient.Session, error) {
	errOut := f.IOStreams.ErrOut
	fmt.Fprintf(errOut, "waiting for %s to approve the session on %s (asked %s; it times out at %s)\n",
		tenant, a.AgentName, a.RequestedAt.UTC().Format(time.TimeOnly), a.Deadline.UTC().Format(time.TimeOnly+" MST"))
	t := time.NewTicker(approvalPoll)
	defer t.Stop()
	var lastShown time.Time // never: the first answer is shown
	var decidedSince time.Time
	failures := 0
	for {
		select {
		case <-ctx.Done():
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := c.Do(wctx, "POST", "/v1/support/sessions/"+url.PathEscape(a.ID)+"/deactivate", nil, nil); err != nil {
				fmt.Fprintf(errOut, "interrupted; the activation could not be withdrawn: %v\n", err)
			} else {
				fmt.Fprintln(errOut, "interrupted; the activation is withdrawn")
			}
			forgetToken(a.ID)
			return apiclient.Session{}, ctx.Err()
		case <-t.C:
		}
		var now approval
		if err := c.Do(ctx, "GET", "/v1/support/sessions/"+url.PathEscape(a.ID)+"/approval", nil, &now); err != nil {
			if ctx.Err() != nil {
				continue
			}
			if failures++; failures >= 10 {
				return apiclient.Session{}, fmt.Errorf("cannot follow the activation %s any more (it may still be decided; see 'argusctl support show %s'): %w", a.ID, a.ID, err)
			}
			continue
		}
		failures = 0
		elapsed := (time.Duration(now.ElapsedMs) * time.Millisecond).Truncate(time.Second)
		switch now.State {
		case "pending_approval":
			if f.IOStreams.OutTTY {
				fmt.Fprintf(errOut, "\rwaiting for approval… %s elapsed", elapsed)
			} else if lastShown.IsZero() || time.Since(lastShown) >= 10*time.Second {
				fmt.Fprintf(errOut, "waiting for approval… %s elapsed\n", elapsed)
				lastShown = time.Now()
			}
			continue
		case "denied":
			forgetToken(a.ID)
			return apiclient.Session{}, &apiclient.Error{Code: "tenant_denied", Message: fmt.Sprintf("the tenant denied the activation after %s", elapsed)}
		case "timeout":
			forgetToken(a.ID)
			return apiclient.Session{}, &apiclient.Error{Code: "tenant_approval_timeout", Message: fmt.Sprintf("the tenant did not answer within %s", elapsed)}
		case "withdrawn":
			forgetToken(a.ID)
			return apiclient.Session{}, &apiclient.Error{Code: "approval_withdrawn", Message: "the activation was withdrawn before the tenant decided"}
		}
		// Approved: the session opens once its agent acknowledges.
		if decidedSince.IsZero() {
			decidedSince = time.Now()
			if f.IOStreams.OutTTY {
				fmt.Fprintln(errOut)
			}
			fmt.Fprintf(errOut, "approved by %s after %s; opening the session\n", now.DecidedBy, elapsed)
		}
		switch now.Outcome {
		case "":
			if time.Since(decidedSince) > decidedGrace {
				return apiclient.Session{}, fmt.Errorf("approved, but the session did not open in %v; see 'argusctl support show %s'", decidedGrace, a.ID)
			}
			continue
		case "opened":
			var s apiclient.Session
			if err := c.Do(ctx, "GET", "/v1/support/sessions/"+url.PathEscape(a.ID), nil, &s); err != nil {
				return apiclient.Session{}, err
			}
			return s, nil
		default:
			forgetToken(a.ID)
			return apiclient.Session{}, &apiclient.Error{Code: now.Outcome, Message: now.OutcomeText}
		}
	}
}
