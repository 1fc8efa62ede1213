package sessions

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/input"
	"github.com/argus-remote/argus/internal/credential"
	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/topics"
)

// MaxResult bounds a result message the server decodes; the broker's
// packet size bounds what can arrive at all.
const MaxResult = 16 << 20

// maxArgs bounds a command's arguments.
const maxArgs = 64 << 10

// Commands the agent can be asked to run. The allowlist is closed:
// anything else is refused before it reaches the broker.
var Commands = map[string]bool{
	"ping": true, "agent_info": true, "tail_log": true, "read_file": true, "get_capabilities": true, "camera_view": true,
	"apply_patch": true,
}

// auditArgsMax bounds the arguments kept verbatim in the audit; larger
// ones are kept by digest only.
const auditArgsMax = 4 << 10

// CommandRequest is a command for one session.
type CommandRequest struct {
	SessionID string
	Token     string
	Name      string
	Args      json.RawMessage
	By        audit.Entry
}

// CommandResult is what the agent answered.
type CommandResult struct {
	CommandID string            `json:"command_id"`
	SessionID string            `json:"session_id"`
	Name      string            `json:"name"`
	Status    string            `json:"status"`
	Error     *topics.ErrorBody `json:"error,omitempty"`
	Data      json.RawMessage   `json:"data,omitempty"`
	Duration  string            `json:"duration"`
	// Warning says what to know of the answer: that the agent had gone
	// silent when the command was sent, so it may have come late.
	Warning string `json:"warning,omitempty"`
}

// session is what a command needs of its session.
type session struct {
	id, tenantID, agentID string
	expiresAt             time.Time
}

// sessionRow is what authorize reads of a session.
type sessionRow struct {
	tenantID, agentID string
	hash              []byte
	ended             bool
	expiresAt         time.Time
}

// Session rows are cached for this long at most; a change evicts them
// sooner (see rowcache), and so does AfterEnd, at once.
const (
	rowCacheTTL = 10 * time.Second
	rowCacheMax = 10_000
)

func (m *Manager) sessionRow(ctx context.Context, id string) (sessionRow, error) {
	if r, ok := m.rows.Get(id); ok {
		return r, nil
	}
	gen := m.rows.Gen()
	var r sessionRow
	err := m.Pool.QueryRow(ctx, `SELECT tenant_id, agent_id, token_hash, ended_at IS NOT NULL, expires_at
		FROM support_sessions WHERE id = $1`, id).Scan(&r.tenantID, &r.agentID, &r.hash, &r.ended, &r.expiresAt)
	if err != nil {
		return sessionRow{}, err
	}
	m.rows.Put(id, r, gen)
	return r, nil
}

// authorize checks a session token against that session alone. A refusal
// is returned as *Refusal with the session's ids filled in for the audit.
func (m *Manager) authorize(ctx context.Context, sessionID, token string) (session, error) {
	s := session{id: sessionID}
	id, ok := input.ID(sessionID)
	if !ok {
		return s, refuse(http.StatusNotFound, "session_not_found", "no such session")
	}
	sessionID, s.id = id, id
	r, err := m.sessionRow(ctx, sessionID)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, refuse(http.StatusNotFound, "session_not_found", "no such session")
	}
	if err != nil {
		return s, fmt.Errorf("command: %w", err)
	}
	s.tenantID, s.agentID, s.expiresAt = r.tenantID, r.agentID, r.expiresAt
	if _, _, err := credential.Parse(credential.Session, token); err != nil || !credential.Verify(r.hash, token) {
		return s, refuse(http.StatusForbidden, "session_token_invalid", "the session token does not belong to this session")
	}
	switch {
	case r.ended:
		return s, refuse(http.StatusConflict, "session_ended", "the session has ended")
	case !s.expiresAt.After(time.Now()):
		return s, refuse(http.StatusConflict, "session_expired", "the session has expired")
	}
	return s, nil
}

// exchange sends one signed command to the session's agent and waits for
// its result, until the command timeout or the session's end.
func (m *Manager) exchange(ctx context.Context, s session, cmdID, name string, args json.RawMessage) (res topics.ResultMsg, err error) {
	ctx, span := tracer().Start(ctx, "command.exchange "+name, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("argus.command_id", cmdID), attribute.String("argus.agent_id", s.agentID)))
	defer func() {
		span.SetAttributes(attribute.String("argus.result", res.Status))
		span.End()
	}()
	now := time.Now()
	deadline := now.Add(m.CommandTimeout)
	if s.expiresAt.Before(deadline) {
		deadline = s.expiresAt
	}
	msg := topics.CommandMsg{
		V: topics.Version, ID: cmdID, SessionID: s.id, TenantID: s.tenantID, AgentID: s.agentID,
		Name: name, Args: args, IssuedAt: now.UTC(), ExpiresAt: deadline.UTC(),
	}
	payload, err := topics.Sign(m.key(), topics.PurposeCommand, msg)
	if err != nil {
		return topics.ResultMsg{}, err
	}
	up := telemetry.Inject(ctx)
	tc := make(map[string]string, len(up.Keys))
	for i, k := range up.Keys {
		tc[k] = up.Values[i]
	}
	return m.deliver(ctx, cluster.Delivery{Kind: cluster.DeliverCommand, AgentID: s.agentID, SessionID: s.id, CommandID: cmdID,
		Name: name, Deadline: deadline, Trace: tc, Payload: payload})
}

// exchangeHere hands a signed command to an agent connected to this node
// and waits for its result. here is false when the agent is not
// connected here (the result says it disconnected).
func (m *Manager) exchangeHere(ctx context.Context, d cluster.Delivery) (res topics.ResultMsg, here bool, err error) {
	// Counted before draining is read, so a drain that has begun either
	// sees this exchange and waits for it, or this exchange sees the
	// drain and sends nothing to an agent about to be sent away.
	m.exchanging.Add(1)
	defer func() {
		m.exchanging.Add(-1)
		m.ranOne()
	}()
	if m.draining.Load() {
		return disconnectedResult(), false, nil
	}
	ch, gone := make(chan topics.ResultMsg, 1), make(chan struct{}, 1)
	m.mu.Lock()
	m.results[d.CommandID] = waiter{agentID: d.AgentID, sessionID: d.SessionID, results: ch, gone: gone}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.results, d.CommandID)
		m.mu.Unlock()
	}()
	// Registered first, so a disconnect from here on is heard; one before
	// would drop the command unseen.
	if !m.Fleet.Online(d.AgentID) {
		return disconnectedResult(), false, nil
	}
	if r := m.withheld(); r != nil {
		// Fenced (or keyless) since the command was checked: it is
		// recorded as failed, never sent.
		return topics.ResultMsg{Status: topics.ResultError, Error: &topics.ErrorBody{Code: r.Code, Message: r.Message}}, true, nil
	}
	if !m.subscribed(d.AgentID) {
		return notReadyResult(), true, nil
	}
	if !time.Now().Before(d.Deadline) {
		// Its sender has stopped waiting (a routed command that reached a
		// frozen holder late, or one whose agent took up its commands
		// only at the deadline): the agent is not handed it.
		return timeoutResult("the command's deadline passed before it reached the agent; it was not sent"), true, nil
	}
	aid, _ := topics.ParseAgentID(d.AgentID)
	props := &packets.Properties{CorrelationData: []byte(d.CommandID), ResponseTopic: aid.Topic(topics.Results)}
	// The trace continues on the agent: its context rides in user properties.
	for k, v := range d.Trace {
		props.User = append(props.User, packets.UserProperty{Key: k, Val: v})
	}
	if err := m.Broker.Publish(aid.Topic(topics.Commands), d.Payload, false, 1, props); err != nil {
		return topics.ResultMsg{}, true, fmt.Errorf("command: publish: %w", err)
	}
	timer := time.NewTimer(time.Until(d.Deadline))
	defer timer.Stop()
	select {
	case res := <-ch:
		return checkResult(d.Name, res), true, nil
	case <-gone:
		return disconnectedResult(), true, nil
	case <-timer.C:
		return timeoutResult("the agent did not answer in time"), true, nil
	case <-ctx.Done():
		return timeoutResult("the request was cancelled"), true, nil
	}
}

func timeoutResult(why string) topics.ResultMsg {
	return topics.ResultMsg{Status: "timeout", Error: &topics.ErrorBody{Code: "agent_timeout", Message: why}}
}

// CodeBadResult marks an agent's answer the server could not take as
// given; the attempt is recorded as failed with this code.
const CodeBadResult = "bad_result"

// Bounds on what an agent's answer may carry into the record.
const (
	maxResultCode    = 64
	maxResultMessage = 1024
)

// checkResult takes an agent's answer as untrusted input: only the server
// says "timeout"; an agent's status is one of three, a failure has a
// reason, and every field the record keeps (code, message, the summary's
// size and digest, the capabilities) is well formed and fits its column.
// Anything else is recorded as bad_result; an agent's bytes never fail
// the write of a command's completion.
func checkResult(name string, res topics.ResultMsg) topics.ResultMsg {
	bad := func(why string) topics.ResultMsg {
		return topics.ResultMsg{V: res.V, CommandID: res.CommandID, SessionID: res.SessionID, AgentID: res.AgentID,
			Status: topics.ResultError, Error: &topics.ErrorBody{Code: CodeBadResult, Message: why}, Completed: res.Completed}
	}
	switch res.Status {
	case topics.ResultOK, topics.ResultError, topics.ResultRefused:
	default:
		return bad("the agent answered with an unknown status")
	}
	if res.Status != topics.ResultOK && res.Error == nil {
		return bad("the agent gave no reason")
	}
	if e := res.Error; e != nil {
		if !validCode(e.Code) {
			return bad("the agent answered with a malformed error code")
		}
		if input.Text("message", e.Message, maxResultMessage) != nil {
			return bad("the agent's error message is not text or is too long")
		}
	}
	if len(res.Data) > 0 {
		var summary struct {
			Bytes  *int64  `json:"bytes"`
			SHA256 *string `json:"sha256"`
		}
		if res.Status == topics.ResultOK && json.Unmarshal(res.Data, &summary) == nil {
			if summary.Bytes != nil && *summary.Bytes < 0 {
				return bad("the agent reported a negative size")
			}
			if summary.SHA256 != nil && !validDigest(*summary.SHA256) {
				return bad("the agent reported a malformed digest")
			}
		}
		if name == "get_capabilities" && res.Status == topics.ResultOK {
			data, err := storableJSON(res.Data)
			if err != nil {
				return bad("the agent's capabilities are not storable JSON")
			}
			res.Data = data
		}
	}
	return res
}

// validCode is an error code as agents and the server spell them.
func validCode(c string) bool {
	if c == "" || len(c) > maxResultCode {
		return false
	}
	for i := 0; i < len(c); i++ {
		if b := c[i]; !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_') {
			return false
		}
	}
	return true
}

func validDigest(d string) bool {
	if len(d) != 64 {
		return false
	}
	_, err := hex.DecodeString(d)
	return err == nil && strings.ToLower(d) == d
}

// storableJSON re-encodes a document the way jsonb takes it: no NUL in
// any string, lone surrogates replaced (Go's decoder does that), numbers
// kept as written.
func storableJSON(doc []byte) ([]byte, error) {
	if err := input.JSON("data", doc); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// statusDisconnected is the server's own result for a command whose agent
// went away while it was in flight; no agent's answer can carry it.
const statusDisconnected = "disconnected"

func disconnectedResult() topics.ResultMsg {
	return topics.ResultMsg{Status: statusDisconnected, Error: &topics.ErrorBody{Code: CodeAgentDisconnected,
		Message: "the agent disconnected while the command was in flight; what it did is unknown"}}
}

// commandStatus maps a result to the commands row status and audit outcome.
func commandStatus(res topics.ResultMsg) (status, outcome, code string) {
	status, outcome = "succeeded", audit.Success
	switch res.Status {
	case topics.ResultRefused:
		status, outcome = "refused", audit.Denied
	case topics.ResultError:
		status, outcome = "failed", audit.Failure
	case "timeout":
		status, outcome = "timeout", audit.Failure
	case statusDisconnected:
		status, outcome = "interrupted", audit.Unknown
	case statusUnreachable:
		status, outcome = "failed", audit.Failure
	}
	if res.Error != nil {
		code = res.Error.Code
	}
	return status, outcome, code
}

// Command runs one command in a session. The session's token is checked
// against that session alone; its tenant and agent come from the session,
// never from the request.
func (m *Manager) Command(ctx context.Context, req CommandRequest) (CommandResult, error) {
	if id, ok := input.ID(req.SessionID); ok {
		req.SessionID = id
	}
	ctx, span := tracer().Start(ctx, "support.command", trace.WithAttributes(attribute.String("argus.command", req.Name),
		attribute.String("argus.session_id", req.SessionID)))
	defer span.End()
	s, authErr := m.authorize(ctx, req.SessionID, req.Token)
	entry := req.By
	entry.Action, entry.SessionID, entry.TenantID, entry.AgentID = "support.command", req.SessionID, s.tenantID, s.agentID
	entry.Detail = map[string]any{"command": req.Name}
	deny := func(r *Refusal) (CommandResult, error) { return CommandResult{}, m.denied(ctx, entry, r) }
	var refusal *Refusal
	switch {
	case errors.As(authErr, &refusal):
		if refusal.Code == "session_not_found" {
			return CommandResult{}, refusal
		}
		return deny(refusal)
	case authErr != nil:
		return CommandResult{}, authErr
	}
	if err := input.Text("name", req.Name, 64); err != nil {
		return deny(refuse(http.StatusBadRequest, err.Code, err.Message))
	}
	if err := input.JSON("args", req.Args); err != nil {
		return deny(refuse(http.StatusBadRequest, err.Code, err.Message))
	}
	switch {
	case req.Name == "apply_patch":
		return deny(refuse(http.StatusBadRequest, "command_not_allowed", "patches go through the patch endpoint"))
	case !Commands[req.Name]:
		return deny(refuse(http.StatusBadRequest, "command_not_allowed", fmt.Sprintf("%q is not an allowed command", req.Name)))
	case len(req.Args) > maxArgs:
		return deny(refuse(http.StatusRequestEntityTooLarge, "payload_too_large", "command arguments over 64 KiB"))
	}
	if r := m.awaitAgent(ctx, s.agentID); r != nil {
		return deny(r)
	}
	if len(req.Args) == 0 {
		req.Args = json.RawMessage("{}")
	}
	digest := sha256.Sum256(req.Args)

	cmdID := uuid.NewString()
	entry.Detail["command_id"] = cmdID
	entry.Detail["args_sha256"] = fmt.Sprintf("%x", digest)
	if len(req.Args) <= auditArgsMax {
		var a any
		if json.Unmarshal(req.Args, &a) == nil {
			entry.Detail["args"] = a
		}
	}
	requested := entry
	requested.Action, requested.Outcome = "support.command.requested", audit.Success
	defer m.running(cmdID)()
	err := m.record(ctx, []audit.Stmt{{
		SQL:  `INSERT INTO commands (id, session_id, name, args_digest, status, deadline) VALUES ($1, $2, $3, $4, 'requested', $5)`,
		Args: []any{cmdID, req.SessionID, req.Name, digest[:], m.deadline(s, 1)},
	}}, requested)
	if err != nil {
		m.Log.Error("command request not recorded", "session", req.SessionID, "err", err)
		return CommandResult{}, notSent()
	}

	started := time.Now()
	stale, lastHeard := m.Fleet.Stale(s.agentID)
	res, err := m.exchange(ctx, s, cmdID, req.Name, req.Args)
	if err != nil {
		return CommandResult{}, err
	}
	out := CommandResult{CommandID: cmdID, SessionID: req.SessionID, Name: req.Name, Status: res.Status, Error: res.Error, Data: res.Data}
	if stale {
		out.Warning = fmt.Sprintf("the agent had missed its heartbeats when the command was sent (last heard from %s before); its answer may be late",
			started.Sub(lastHeard).Round(time.Second))
	}
	out.Duration = time.Since(started).Round(time.Microsecond).String()
	status, outcome, code := commandStatus(res)
	attrs := metric.WithAttributes(attribute.String("name", req.Name), attribute.String("outcome", status))
	commandsTotal().Add(ctx, 1, attrs)
	commandSeconds().Record(ctx, time.Since(started).Seconds(), metric.WithAttributes(attribute.String("name", req.Name)))
	agentID := s.agentID
	done := entry
	done.Action, done.Outcome = "support.command.completed", outcome
	done.Detail = map[string]any{"command": req.Name, "command_id": cmdID, "status": status, "code": code, "duration": out.Duration}
	// What came back, by size and digest; never the content.
	var summary struct {
		Bytes  *int   `json:"bytes"`
		SHA256 string `json:"sha256"`
	}
	if res.Status == topics.ResultOK && json.Unmarshal(res.Data, &summary) == nil {
		if summary.Bytes != nil {
			done.Detail["bytes"] = *summary.Bytes
		}
		if summary.SHA256 != "" {
			done.Detail["sha256"] = summary.SHA256
		}
	}
	done.Detail["result_bytes"] = len(res.Data)
	if stale {
		done.Detail["agent_stale"] = true
	}
	stmts := []audit.Stmt{{
		SQL:  `UPDATE commands SET status = $2, error_code = NULLIF($3, ''), completed_at = now() WHERE id = $1`,
		Args: []any{cmdID, status, code},
	}}
	if req.Name == "get_capabilities" && status == "succeeded" && len(res.Data) > 0 {
		stmts = append(stmts, audit.Stmt{SQL: "UPDATE agents SET capabilities = $2, capabilities_at = now() WHERE id = $1", Args: []any{agentID, json.RawMessage(res.Data)}})
	}
	err = m.record(context.WithoutCancel(ctx), stmts, done)
	if err != nil {
		m.Log.Error("command completion not recorded", "command", cmdID, "session", req.SessionID, "err", err)
		return CommandResult{}, notRecorded(cmdID)
	}
	m.feedCommand(s, topics.FeedEntry{CommandID: cmdID, Operator: operatorName(req.By.Actor), Command: req.Name,
		Summary: feedSummary(req.Name, req.Args, res.Data, res.Status == topics.ResultOK), Outcome: status, Code: code})
	if status == "timeout" {
		return out, refuse(http.StatusGatewayTimeout, "agent_timeout", res.Error.Message)
	}
	if res.Status == statusDisconnected {
		return out, &Refusal{Status: http.StatusBadGateway, Code: CodeAgentDisconnected, Message: res.Error.Message, CommandID: cmdID}
	}
	if res.Status == statusUnreachable {
		return out, &Refusal{Status: http.StatusBadGateway, Code: res.Error.Code, Message: res.Error.Message, CommandID: cmdID}
	}
	if req.Name == "get_capabilities" && status == "succeeded" {
		m.settlePatches(context.WithoutCancel(ctx), agentID, res.Data)
	}
	return out, nil
}
