package broker

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Policy is the single source of truth for who may connect to the broker
// and which topics they may touch. Implementations must be fast and
// in-memory on Allow: mochi calls it on every delivery, in the publisher's
// goroutine.
type Policy interface {
	// Authenticate decides a CONNECT.
	Authenticate(ConnectRequest) bool
	// Allow decides a subscribe (write false, topic is the raw filter), a
	// publish (write true) and each delivery (write false, concrete topic).
	Allow(clientID, username, topic string, write bool) bool
}

// ConnectRequest is what a CONNECT asks for, as sent.
type ConnectRequest struct {
	ClientID        string
	Username        string
	Password        []byte
	CleanStart      bool
	SessionExpiry   uint32
	HasWill         bool
	ProtocolVersion byte
	Remote          string
}

// accessHook adapts a Policy to mochi. It is the only hook that answers
// OnConnectAuthenticate and OnACLCheck; mochi ORs hooks, so adding any
// permissive hook beside it would open the broker. It also keeps retained
// messages the control plane's (OnPublish).
type accessHook struct {
	mqtt.HookBase
	policy Policy
}

func (h *accessHook) ID() string { return "argus-access" }

func (h *accessHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish}, []byte{b})
}

// OnPublish clears the retain flag of every publish but the control
// plane's (in-process clients'): the ACL sees topics, not flags, and a
// retained message would outlive its publisher, never expiring, in the
// broker's memory. The publish is delivered as usual; it neither stores
// a retained message nor, empty, deletes one.
func (h *accessHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline {
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if h.policy == nil {
		return false
	}
	return h.policy.Authenticate(ConnectRequest{
		ClientID:        cl.ID,
		Username:        string(pk.Connect.Username),
		Password:        pk.Connect.Password,
		CleanStart:      pk.Connect.Clean,
		SessionExpiry:   pk.Properties.SessionExpiryInterval,
		HasWill:         pk.Connect.WillFlag,
		ProtocolVersion: pk.ProtocolVersion,
		Remote:          cl.Net.Remote,
	})
}

func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if h.policy == nil {
		return false
	}
	return h.policy.Allow(cl.ID, string(cl.Properties.Username), topic, write)
}
