package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Routing: the node an operator calls decides, signs and audits; the node
// holding the agent only moves the signed bytes over MQTT and hands back
// what the agent answered. A delivery carries nothing that is not already
// committed: its audit row is written before it is sent.

// Kinds of delivery.
const (
	DeliverCommand    = "command"
	DeliverActivation = "activation"
	// DeliverProbe asks what the holder knows of the agent now (a Probe);
	// nothing reaches the agent.
	DeliverProbe = "probe"
)

// Probe is the holder's answer to DeliverProbe: what an activation
// checks before its commit that only the holding node knows.
type Probe struct {
	KillSwitch bool `json:"kill_switch"`
}

// Answer codes a holding node gives instead of the agent's answer.
const (
	// NotHere: the node no longer holds the agent (it moved or went).
	NotHere = "not_here"
	// Fenced: the node has lost its lease and delivers nothing.
	Fenced = "fenced"
	// Ended: the session ended before the activation could be opened.
	Ended = "ended"
	// Unacknowledged: the activation was handed to the agent, which did
	// not acknowledge it by the deadline.
	Unacknowledged = "timeout"
	// Expired: the delivery reached the holder past its deadline (the
	// holder was frozen, say), when its sender had stopped waiting;
	// nothing was handed to the agent.
	Expired = "expired"
	// Malformed: the delivery names its session, tenant or command by
	// something that is not an id; nothing was handed to the agent.
	Malformed = "malformed"
)

// MaxPayload is the embedded NATS server's max_payload. A command's
// result may reach the broker's packet limit (8 MiB of result plus its
// envelope) and a patch chunk is 3 MiB before base64, so one message must
// carry a little over 8 MiB. Measured (BenchmarkRoute_8MiB: two routed
// embedded servers on loopback, 2 shared cores, 3 runs of 30): one 8 MiB
// message with max_payload raised takes 11.6-14.9 ms and 25.5 MB of
// allocations; eight 1 MiB chunks streamed to an inbox take 10.3-15.9 ms
// and 36 MB. The times are the same within noise; chunking would add a
// reassembly buffer, ordering and the loss of one chunk (core NATS is at
// most once) to handle, on both nodes, for nothing. So one message: NATS
// allows up to 64 MB and advises against more than 8 MB for the latency
// of other traffic on the connection, which here is small broadcasts. An
// external NATS needs max_payload of at least this in its configuration:
// Connect refuses a smaller one, saying so.
const MaxPayload = 12 << 20

// Header names of a delivery; the body is the signed envelope itself, so
// an 8 MiB payload is not base64'd into JSON a second time.
const (
	hdrDelivery = "Argus-Delivery"
	hdrCode     = "Argus-Code"
)

// Delivery asks the node that holds an agent to hand it a signed message
// and wait for the agent's answer.
type Delivery struct {
	Kind      string    `json:"kind"`
	AgentID   string    `json:"agent_id"`
	SessionID string    `json:"session_id"`
	CommandID string    `json:"command_id,omitempty"`
	Name      string    `json:"name,omitempty"`
	Deadline  time.Time `json:"deadline"`
	// Trace is the trace context, carried on to the agent.
	Trace map[string]string `json:"trace,omitempty"`
	// An activation's session, as the holder keeps it to re-publish the
	// activation when the agent reconnects there and to show it live.
	TenantID  string    `json:"tenant_id,omitempty"`
	Operator  string    `json:"operator,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Payload is the signed envelope the agent gets (commands only: an
	// activation is signed by the holder as it publishes it, since it
	// re-signs it on every reconnect anyway).
	Payload []byte `json:"-"`
}

// Answer is the holder's reply: the agent's answer (a topics.ResultMsg or
// topics.ActivationAckMsg, as JSON), or a code saying why there is none.
type Answer struct {
	Code string
	Body []byte
}

// ErrNoResponder means no node answers on the holder's subject: it is
// gone, or has not subscribed yet.
var ErrNoResponder = errors.New("cluster: no node answers for that agent")

// NodeID is this node's id.
func (w *Wire) NodeID() string { return w.cfg.NodeID }

func (w *Wire) deliverSubject(node string) string { return w.Subject("node", node, "deliver") }

// ServeDeliveries answers deliveries addressed to this node with handle,
// each in its own goroutine: a slow agent must not hold up the others.
func (w *Wire) ServeDeliveries(handle func(ctx context.Context, d Delivery) Answer) error {
	_, err := w.nc.Subscribe(w.deliverSubject(w.cfg.NodeID), func(m *nats.Msg) {
		var d Delivery
		if err := json.Unmarshal([]byte(m.Header.Get(hdrDelivery)), &d); err != nil || m.Reply == "" {
			w.log.Warn("cluster: unreadable delivery", "err", err)
			return
		}
		d.Payload = m.Data
		go func() {
			// The requester stops waiting at the deadline; so does this.
			ctx, cancel := context.WithDeadline(context.Background(), d.Deadline.Add(time.Second))
			defer cancel()
			a := handle(ctx, d)
			r := nats.NewMsg(m.Reply)
			r.Header.Set(hdrCode, a.Code)
			r.Data = a.Body
			if err := w.nc.PublishMsg(r); err != nil {
				w.log.Warn("cluster: delivery answer lost", "agent", d.AgentID, "command", d.CommandID, "err", err)
			}
		}()
	})
	if err != nil {
		return fmt.Errorf("cluster: serve deliveries: %w", err)
	}
	return w.nc.Flush()
}

// Deliver sends d to node and waits, until ctx ends, for its answer.
func (w *Wire) Deliver(ctx context.Context, node string, d Delivery) (Answer, error) {
	h, err := json.Marshal(d)
	if err != nil {
		return Answer{}, err
	}
	m := nats.NewMsg(w.deliverSubject(node))
	m.Header.Set(hdrDelivery, string(h))
	m.Data = d.Payload
	r, err := w.nc.RequestMsgWithContext(ctx, m)
	if errors.Is(err, nats.ErrNoResponders) {
		return Answer{}, ErrNoResponder
	}
	if err != nil {
		return Answer{}, fmt.Errorf("cluster: deliver to %s: %w", node, err)
	}
	return Answer{Code: r.Header.Get(hdrCode), Body: r.Data}, nil
}
