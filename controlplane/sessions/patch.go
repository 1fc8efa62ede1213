package sessions

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/patch"
	"github.com/argus-remote/argus/topics"
)

// patchChunk is the largest slice of a bundle sent in one command: with
// base64 and the envelope it stays well under the broker's packet limit.
const patchChunk = 3 << 20

// PatchRequest sends a bundle to a session's agent.
type PatchRequest struct {
	SessionID string
	Token     string
	Bundle    []byte
	By        audit.Entry
}

// PatchResult is the outcome of one patch attempt.
type PatchResult struct {
	CommandID string            `json:"command_id"`
	SessionID string            `json:"session_id"`
	PatchID   string            `json:"patch_id"`
	Version   string            `json:"version"`
	Digest    string            `json:"bundle_sha256"`
	Status    string            `json:"status"`
	Error     *topics.ErrorBody `json:"error,omitempty"`
	Data      json.RawMessage   `json:"data,omitempty"`
	Duration  string            `json:"duration"`
}

// ApplyPatch sends a signed bundle to the session's agent, in chunks, and
// returns what the agent did with it. The server does not vouch for the
// bundle (only the agent's own keys do); it records what was sent. An
// attempt the server refuses is one audited action (support.patch); one it
// sends is two, support.patch.requested committed before the first chunk
// and support.patch.completed after the last answer.
func (m *Manager) ApplyPatch(ctx context.Context, req PatchRequest) (PatchResult, error) {
	if id, ok := input.ID(req.SessionID); ok {
		req.SessionID = id
	}
	sum := sha256.Sum256(req.Bundle)
	out := PatchResult{SessionID: req.SessionID, Digest: hex.EncodeToString(sum[:])}
	man, _, inspectErr := patch.Inspect(req.Bundle)
	out.PatchID, out.Version = man.ID, man.Version

	s, authErr := m.authorize(ctx, req.SessionID, req.Token)
	entry := req.By
	entry.Action, entry.SessionID, entry.TenantID, entry.AgentID = "support.patch", req.SessionID, s.tenantID, s.agentID
	entry.Detail = map[string]any{"patch_id": man.ID, "version": man.Version, "bundle_sha256": out.Digest, "bytes": len(req.Bundle), "root": man.Root}
	deny := func(r *Refusal) (PatchResult, error) {
		e := entry
		e.Detail = map[string]any{"status": "refused_by_server"}
		for k, v := range entry.Detail {
			e.Detail[k] = v
		}
		return PatchResult{}, m.denied(ctx, e, r)
	}
	var refusal *Refusal
	switch {
	case errors.As(authErr, &refusal):
		if refusal.Code == "session_not_found" {
			return PatchResult{}, refusal
		}
		return deny(refusal)
	case authErr != nil:
		return PatchResult{}, authErr
	case len(req.Bundle) > patch.MaxBundle:
		return deny(refuse(http.StatusRequestEntityTooLarge, patch.CodeTooLarge, fmt.Sprintf("the bundle is %d bytes; the limit is %d", len(req.Bundle), patch.MaxBundle)))
	case inspectErr != nil:
		return deny(refuse(http.StatusBadRequest, patch.CodeMalformed, "not a patch bundle"))
	}

	cmdID := uuid.NewString()
	out.CommandID = cmdID
	entry.Detail["command_id"] = cmdID

	// As for every command: the request and its commands row commit before
	// the first chunk leaves, or nothing is sent; the completion follows.
	if r := m.awaitAgent(ctx, s.agentID); r != nil {
		return deny(r)
	}
	started := time.Now()
	count := (len(req.Bundle) + patchChunk - 1) / patchChunk
	requested := entry
	requested.Action, requested.Outcome = "support.patch.requested", audit.Success
	defer m.running(cmdID)()
	if err := m.record(ctx, []audit.Stmt{{
		SQL:  `INSERT INTO commands (id, session_id, name, args_digest, status, deadline) VALUES ($1, $2, 'apply_patch', $3, 'requested', $4)`,
		Args: []any{cmdID, req.SessionID, sum[:], m.deadline(s, count)},
	}}, requested); err != nil {
		m.Log.Error("patch request not recorded", "session", req.SessionID, "err", err)
		return PatchResult{}, notSent()
	}

	var res topics.ResultMsg
	for i := 0; i < count; i++ {
		end := min((i+1)*patchChunk, len(req.Bundle))
		args, _ := json.Marshal(map[string]any{
			"transfer": cmdID, "index": i, "count": count, "sha256": out.Digest,
			"data": base64.StdEncoding.EncodeToString(req.Bundle[i*patchChunk : end]),
		})
		// Each chunk is its own signed command; the last one's answer is
		// the patch's outcome.
		id := cmdID
		if i < count-1 {
			id = uuid.NewString()
		}
		var err error
		if res, err = m.exchange(ctx, s, id, "apply_patch", args); err != nil {
			res = topics.ResultMsg{Status: topics.ResultError, Error: &topics.ErrorBody{Code: "internal", Message: "the bundle could not be sent"}}
			m.Log.Error("sending patch chunk", "session", req.SessionID, "err", err)
		}
		if res.Status != topics.ResultOK {
			break
		}
	}
	out.Status, out.Error, out.Data = res.Status, res.Error, res.Data
	out.Duration = time.Since(started).Round(time.Microsecond).String()

	status, outcome, code := commandStatus(res)
	commandsTotal().Add(ctx, 1, metric.WithAttributes(attribute.String("name", "apply_patch"), attribute.String("outcome", status)))
	commandSeconds().Record(ctx, time.Since(started).Seconds(), metric.WithAttributes(attribute.String("name", "apply_patch")))
	done := entry
	done.Action, done.Outcome = "support.patch.completed", outcome
	done.Detail = map[string]any{"patch_id": man.ID, "version": man.Version, "bundle_sha256": out.Digest, "command_id": cmdID,
		"status": status, "code": code, "duration": out.Duration}
	if err := m.record(context.WithoutCancel(ctx), []audit.Stmt{{
		SQL:  `UPDATE commands SET status = $2, error_code = NULLIF($3, ''), completed_at = now() WHERE id = $1`,
		Args: []any{cmdID, status, code},
	}}, done); err != nil {
		m.Log.Error("patch completion not recorded", "command", cmdID, "session", req.SessionID, "err", err)
		return PatchResult{}, notRecorded(cmdID)
	}
	m.feedCommand(s, topics.FeedEntry{CommandID: cmdID, Operator: operatorName(req.By.Actor), Command: "apply_patch",
		Summary: patchSummary(man.ID, man.Version), Outcome: status, Code: code})
	if status == "timeout" {
		return out, refuse(http.StatusGatewayTimeout, "agent_timeout", "the agent did not answer in time; what it did is unknown")
	}
	if res.Status == statusDisconnected {
		return out, &Refusal{Status: http.StatusBadGateway, Code: CodeAgentDisconnected, Message: res.Error.Message, CommandID: cmdID}
	}
	if res.Status == statusUnreachable {
		return out, &Refusal{Status: http.StatusBadGateway, Code: res.Error.Code, Message: res.Error.Message, CommandID: cmdID}
	}
	return out, nil
}
