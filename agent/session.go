package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/argus-remote/argus/internal/telemetry"
	"github.com/argus-remote/argus/topics"
)

// tracer is looked up at each use: a provider installed later (a second
// server in one test process) must be the one that records.
func tracer() trace.Tracer { return otel.Tracer("argus/agent") }

// maxSession is the longest session the agent accepts, whatever an
// activation says: the same cap the server enforces, checked again here.
const maxSession = 120 * time.Minute

// maxCommand bounds a signed command envelope: a patch chunk is the
// largest command.
const maxCommand = MaxResultBytes

// session is the activation in force.
type session struct {
	id        string
	tenant    string
	operator  string
	since     time.Time
	expiresAt time.Time
	timer     *time.Timer
	seen      map[string]bool // command ids run, against replays
}

// Status is what `argus-agent status` shows, written by the running agent.
type Status struct {
	State      string    `json:"state"`
	SessionID  string    `json:"session_id,omitempty"`
	Operator   string    `json:"operator,omitempty"`
	Since      time.Time `json:"since,omitzero"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	KillSwitch bool      `json:"kill_switch"`
	Connected  bool      `json:"connected"`
	// Refused, when set, says the broker refuses this agent's
	// credentials: its enrollment was refused or revoked.
	Refused   *Refusal  `json:"refused,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

const statusFile = "status.json"

// ReadStatus reads the running agent's status from its state directory.
func ReadStatus(dir string) (Status, error) {
	b, err := os.ReadFile(filepath.Join(dir, statusFile))
	if err != nil {
		return Status{}, err
	}
	var s Status
	return s, json.Unmarshal(b, &s)
}

// DisableStatusFile stops the agent writing status.json (the load harness
// runs thousands of agents in one process, sharing no state directory).
func (a *Agent) DisableStatusFile() { a.noStatus = true }

func (a *Agent) writeStatusLocked() {
	if a.noStatus {
		return
	}
	s := Status{State: topics.StateDormant, KillSwitch: a.killSwitch, Connected: a.connected, UpdatedAt: time.Now().UTC()}
	if a.sess != nil {
		s.State, s.SessionID, s.Operator, s.Since, s.ExpiresAt = topics.StateActive, a.sess.id, a.sess.operator, a.sess.since, a.sess.expiresAt
	}
	if a.refusal != nil {
		r := *a.refusal
		s.Refused = &r
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	tmp := filepath.Join(a.cfg.StateDir, statusFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		_ = os.Rename(tmp, filepath.Join(a.cfg.StateDir, statusFile))
	}
}

// stateLocked is the agent's activation state as it reports it.
func (a *Agent) stateLocked() (string, string) {
	if a.sess != nil {
		return topics.StateActive, a.sess.id
	}
	return topics.StateDormant, ""
}

// onActivation applies a signed activation state. Anything unsigned,
// for another agent, stale, too long, expired, or arriving while the kill
// switch is engaged leaves the agent dormant.
func (a *Agent) onActivation(ctx context.Context, payload []byte) {
	if len(payload) == 0 {
		return // a cleared retained message
	}
	if topics.IsKeyChain(payload) {
		a.onKeyChain(ctx, payload)
		return
	}
	ack := topics.ActivationAckMsg{V: topics.Version, AgentID: a.st.AgentID, State: topics.StateDormant}
	var msg topics.ActivationMsg
	if err := a.keys.open(topics.PurposeActivation, payload, topics.MaxEnvelope, &msg); err != nil {
		// Kept, so an activation signed with a key the agent learns of a
		// moment later (in the chain that follows) is applied then.
		a.mu.Lock()
		a.unverified = payload
		a.mu.Unlock()
		a.log.Warn("refusing activation: not signed by the control plane", "err", err)
		ack.Error = "bad_signature"
		a.publish(ctx, topics.ActivationAck, ack, 1)
		return
	}
	ack.SessionID = msg.SessionID
	now := time.Now()

	a.mu.Lock()
	a.unverified = nil
	refusal := ""
	switch {
	case msg.AgentID != a.st.AgentID:
		refusal = "wrong_agent"
	case msg.IssuedAt.Before(a.lastIssued):
		refusal = "stale_activation"
	case msg.State == topics.StateActive && a.cfg.RemoteSupportDisabled:
		refusal = "remote_support_disabled"
	case msg.State == topics.StateActive && a.killSwitch:
		refusal = "agent_kill_switch_engaged"
	case msg.State == topics.StateActive && !msg.ExpiresAt.After(now):
		refusal = "activation_expired"
	case msg.State == topics.StateActive && msg.ExpiresAt.Sub(msg.IssuedAt) > maxSession:
		refusal = "ttl_exceeds_cap"
	case msg.State != topics.StateActive && msg.State != topics.StateDormant:
		refusal = "bad_state"
	}
	if refusal != "" {
		state, sid := a.stateLocked()
		a.mu.Unlock()
		a.log.Warn("refusing activation", "session", msg.SessionID, "code", refusal, "state", state)
		ack.Error, ack.State = refusal, state
		if sid != "" && refusal != "stale_activation" {
			ack.SessionID = sid
		}
		a.publish(ctx, topics.ActivationAck, ack, 1)
		return
	}
	// A dormant state for some other session (an end that arrives after a
	// newer session began) does not end the one in force.
	if msg.State == topics.StateDormant && a.sess != nil && msg.SessionID != "" && msg.SessionID != a.sess.id {
		sid := a.sess.id
		a.mu.Unlock()
		ack.State, ack.SessionID, ack.Error = topics.StateActive, sid, "stale_activation"
		a.publish(ctx, topics.ActivationAck, ack, 1)
		return
	}
	a.lastIssued = msg.IssuedAt
	if msg.State == topics.StateDormant {
		ended := a.endSessionLocked("control plane ended it")
		a.mu.Unlock()
		if ended {
			a.unsubscribeCommands(ctx)
		}
		a.publish(ctx, topics.ActivationAck, ack, 1)
		return
	}
	// Active. The same activation delivered again (a retained message on
	// reconnect) is applied once.
	fresh := a.sess == nil || a.sess.id != msg.SessionID
	if fresh {
		a.endSessionLocked("replaced")
		s := &session{id: msg.SessionID, tenant: msg.TenantID, operator: msg.Operator, since: now.UTC(), expiresAt: msg.ExpiresAt, seen: map[string]bool{}}
		// The agent enforces the end itself: a dead control plane cannot
		// leave it open.
		s.timer = time.AfterFunc(time.Until(msg.ExpiresAt), func() { a.expire(ctx, s.id) })
		a.sess = s
		a.writeStatusLocked()
		a.log.Warn("REMOTE SUPPORT SESSION ACTIVE", "session", s.id, "operator", s.operator, "until", s.expiresAt.Format(time.RFC3339), "reason", msg.Reason)
		a.emit("active", s.id)
	}
	a.mu.Unlock()
	a.subscribeCommands(ctx)
	ack.State = topics.StateActive
	a.publish(ctx, topics.ActivationAck, ack, 1)
}

// endSessionLocked drops the session in force, if any.
func (a *Agent) endSessionLocked(why string) bool {
	if a.sess == nil {
		return false
	}
	a.sess.timer.Stop()
	id := a.sess.id
	a.sess = nil
	a.xfer = nil
	a.writeStatusLocked()
	a.log.Warn("REMOTE SUPPORT SESSION ENDED; agent dormant", "session", id, "why", why)
	a.emit("dormant", id)
	return true
}

// expire ends the session at its expires_at, on the agent's own clock.
func (a *Agent) expire(ctx context.Context, sessionID string) {
	a.mu.Lock()
	if a.sess == nil || a.sess.id != sessionID {
		a.mu.Unlock()
		return
	}
	a.endSessionLocked("expired")
	a.mu.Unlock()
	a.unsubscribeCommands(ctx)
	a.publish(ctx, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: a.st.AgentID, SessionID: sessionID, State: topics.StateDormant, Error: "expired"}, 1)
}

func (a *Agent) subscribeCommands(ctx context.Context) { a.subscribeCommandsTry(ctx, 0) }

func (a *Agent) subscribeCommandsTry(ctx context.Context, try int) {
	cm := a.conn()
	if cm == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: a.id.Topic(topics.Commands), QoS: 1}}}); err != nil {
		a.log.Error("subscribe to commands", "err", err)
		// A session that moved here from another node is opened on this
		// broker a moment after its activation arrives: try again, while
		// the session is on and the connection the same.
		a.mu.Lock()
		sess := a.sess
		a.mu.Unlock()
		if sess != nil {
			time.AfterFunc(min(commandsRetry<<min(try, 5), 10*time.Second), func() {
				a.mu.Lock()
				same := a.sess == sess && a.connected
				a.mu.Unlock()
				if same && ctx.Err() == nil {
					a.subscribeCommandsTry(ctx, try+1)
				}
			})
		}
	}
}

// commandsRetry is how soon a refused subscription to the commands topic
// of a session in force is first tried again (then twice as late each
// time, up to 10 s).
const commandsRetry = 500 * time.Millisecond

func (a *Agent) unsubscribeCommands(ctx context.Context) {
	cm := a.conn()
	if cm == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = cm.Unsubscribe(sctx, &paho.Unsubscribe{Topics: []string{a.id.Topic(topics.Commands)}})
}

// onCommand runs a command only when it is signed by the control plane,
// for this agent and the session in force, unexpired, and not seen before.
// Anything else is refused, and the refusal reported.
func (a *Agent) onCommand(ctx context.Context, p *paho.Publish) {
	// Continue the operator's trace: the control plane put its context in
	// the packet's user properties.
	if p.Properties != nil {
		up := &telemetry.UserProps{}
		for _, u := range p.Properties.User {
			up.Set(u.Key, u.Value)
		}
		ctx = telemetry.Extract(ctx, up)
	}
	ctx, span := tracer().Start(ctx, "agent.command", trace.WithSpanKind(trace.SpanKindConsumer))
	var cmd topics.CommandMsg
	err := a.keys.open(topics.PurposeCommand, p.Payload, maxCommand, &cmd)
	now := time.Now()

	a.mu.Lock()
	code, why := "", ""
	switch {
	case err != nil:
		code, why = "bad_signature", "the command is not signed by the control plane"
		cmd = topics.CommandMsg{}
	case a.sess == nil:
		code, why = "agent_dormant", "the agent is dormant: no activation is in force"
	case a.killSwitch:
		code, why = "agent_kill_switch_engaged", "the tenant's kill switch is engaged"
	case cmd.AgentID != a.st.AgentID:
		code, why = "wrong_agent", "the command is for another agent"
	case cmd.SessionID != a.sess.id:
		code, why = "session_mismatch", "the command is for another session"
	case !now.Before(cmd.ExpiresAt) || !now.Before(a.sess.expiresAt):
		code, why = "command_expired", "the command or its session has expired"
	case a.sess.seen[cmd.ID]:
		code, why = "command_replayed", "the command has already been run"
	}
	if code == "" {
		a.sess.seen[cmd.ID] = true
	}
	a.mu.Unlock()

	span.SetAttributes(attribute.String("argus.command", cmd.Name), attribute.String("argus.command_id", cmd.ID))
	if code != "" {
		span.SetAttributes(attribute.String("argus.code", code))
		a.log.WarnContext(ctx, "refused command", "command", cmd.Name, "id", cmd.ID, "code", code)
		a.emit("refused", code)
		a.reply(ctx, p, topics.ResultMsg{CommandID: cmd.ID, SessionID: cmd.SessionID, Status: topics.ResultRefused,
			Error: &topics.ErrorBody{Code: code, Message: why}})
		span.End()
		return
	}
	// Accepted commands run beside each other, so a slow one (a camera
	// frame, a patch's health check) does not hold up the next, and a
	// result's wait for the broker's acknowledgement does not pace the
	// session. They were checked above in arrival order; the inbox waits
	// here only while maxRunningCommands are running.
	a.running <- struct{}{}
	go func() {
		defer func() { <-a.running }()
		defer span.End()
		a.execute(ctx, p, cmd)
	}()
}

// maxRunningCommands bounds the commands an agent runs at once.
const maxRunningCommands = 16

// execute runs an accepted command and replies with its result.
func (a *Agent) execute(ctx context.Context, p *paho.Publish, cmd topics.CommandMsg) {
	a.log.InfoContext(ctx, "running command", "command", cmd.Name, "id", cmd.ID, "session", cmd.SessionID)
	data, cerr := a.run(ctx, cmd)
	res := topics.ResultMsg{CommandID: cmd.ID, SessionID: cmd.SessionID, Status: topics.ResultOK}
	if cerr != nil {
		var ce *CommandError
		if !errors.As(cerr, &ce) {
			ce = &CommandError{Code: "command_failed", Message: cerr.Error()}
		}
		res.Status, res.Error = topics.ResultError, &topics.ErrorBody{Code: ce.Code, Message: ce.Message}
	} else if res.Data, cerr = json.Marshal(data); cerr != nil {
		res.Status, res.Data = topics.ResultError, nil
		res.Error = &topics.ErrorBody{Code: "command_failed", Message: "result not encodable"}
	}
	a.reply(ctx, p, res)
}

// reply publishes a result, correlated with its command.
func (a *Agent) reply(ctx context.Context, p *paho.Publish, res topics.ResultMsg) {
	res.V, res.AgentID, res.Completed = topics.Version, a.st.AgentID, time.Now().UTC()
	b, err := encodeResult(res, MaxResultBytes)
	if err != nil {
		a.log.Error("encode result", "err", err)
		return
	}
	cm := a.conn()
	if cm == nil {
		return
	}
	props := &paho.PublishProperties{}
	if p.Properties != nil {
		props.CorrelationData = p.Properties.CorrelationData
	}
	up := telemetry.Inject(ctx)
	for i, k := range up.Keys {
		props.User = append(props.User, paho.UserProperty{Key: k, Value: up.Values[i]})
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cm.Publish(pctx, &paho.Publish{Topic: a.id.Topic(topics.Results), QoS: 1, Payload: b, Properties: props}); err != nil {
		a.log.Warn("publish result", "err", err)
	}
}

// encodeResult encodes res; over max bytes, the result is replaced by an
// error that says so, with the size: never dropped, never truncated.
func encodeResult(res topics.ResultMsg, max int) ([]byte, error) {
	b, err := json.Marshal(res)
	if err != nil || len(b) <= max {
		return b, err
	}
	size := len(b)
	res.Status, res.Data = topics.ResultError, nil
	res.Error = &topics.ErrorBody{Code: "result_too_large", Message: fmt.Sprintf("the result is %d bytes; the limit is %d", size, max)}
	return json.Marshal(res)
}

// CommandError is a command failure with a stable code.
type CommandError struct {
	Code    string
	Message string
}

func (e *CommandError) Error() string { return e.Code + ": " + e.Message }

// run executes an allowlisted command.
func (a *Agent) run(ctx context.Context, cmd topics.CommandMsg) (any, error) {
	switch cmd.Name {
	case "ping":
		return map[string]any{"pong": true, "time": time.Now().UTC()}, nil
	case "agent_info":
		host, _ := os.Hostname()
		a.mu.Lock()
		state, sid := a.stateLocked()
		a.mu.Unlock()
		return map[string]any{
			"agent_id": a.st.AgentID, "agent_name": a.st.AgentName, "tenant": a.st.Tenant,
			"version": Version, "os": runtime.GOOS, "arch": runtime.GOARCH, "hostname": host,
			"go_version": runtime.Version(), "uptime_seconds": int(time.Since(a.started).Seconds()),
			"state": state, "session_id": sid,
		}, nil
	case "tail_log":
		return a.tailLog(cmd.Args)
	case "read_file":
		return a.readFile(cmd.Args)
	case "get_capabilities":
		return a.capabilities(ctx)
	case "camera_view":
		return a.cameraView(ctx, cmd.Args)
	case "apply_patch":
		return a.applyPatchChunk(ctx, cmd.SessionID, cmd.Args)
	}
	return nil, &CommandError{Code: "command_not_supported", Message: fmt.Sprintf("this agent does not run %q", cmd.Name)}
}
