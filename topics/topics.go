// Package topics is the one place that builds or parses an MQTT topic, and
// it defines the versioned JSON envelopes that travel on them. The server,
// the agent and the broker's ACL all use it, so a topic string cannot drift
// between them.
//
// Identifiers are UUIDs, validated before any topic is built: a topic can
// never carry a wildcard (+, #), a level separator, or NUL from an id.
package topics

import (
	"errors"
	"strings"
)

// Root is the prefix of every ARGUS topic.
const Root = "argus/v1/"

const (
	agentsRoot  = Root + "agents/"
	statusRoot  = Root + "status/"
	tenantsRoot = statusRoot + "tenants/"
)

// ErrInvalidID is returned for an id that is not a canonical UUID.
var ErrInvalidID = errors.New("topics: id is not a canonical UUID")

// AgentID is a validated agent id. Its zero value is invalid and builds no
// topic; get one from ParseAgentID.
type AgentID struct{ s string }

// TenantID is a validated tenant id.
type TenantID struct{ s string }

// ParseAgentID validates s as a canonical (lowercase, hyphenated) UUID.
func ParseAgentID(s string) (AgentID, error) {
	if !canonicalUUID(s) {
		return AgentID{}, ErrInvalidID
	}
	return AgentID{s}, nil
}

// ParseTenantID validates s as a canonical UUID.
func ParseTenantID(s string) (TenantID, error) {
	if !canonicalUUID(s) {
		return TenantID{}, ErrInvalidID
	}
	return TenantID{s}, nil
}

// canonicalUUID accepts exactly the lowercase, hyphenated form; it runs on
// every broker ACL check, so it does not allocate.
func canonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

func (a AgentID) String() string  { return a.s }
func (t TenantID) String() string { return t.s }

// IsZero reports whether a is the invalid zero value.
func (a AgentID) IsZero() bool { return a.s == "" }

// Kind names one of an agent's topics.
type Kind string

// An agent's topics. The direction is in the comment; the broker ACL
// enforces it.
const (
	Activation    Kind = "activation"     // server → agent, retained, signed
	ActivationAck Kind = "activation/ack" // agent → server
	Commands      Kind = "commands"       // server → agent, signed, ACL-gated
	Results       Kind = "results"        // agent → server
	Heartbeat     Kind = "heartbeat"      // agent → server
	Manifest      Kind = "manifest"       // agent → server, advisory
)

var agentKinds = []Kind{Activation, ActivationAck, Commands, Results, Heartbeat, Manifest}

// AgentPublishes are the topics an agent may publish on.
var AgentPublishes = []Kind{ActivationAck, Results, Heartbeat, Manifest}

// Topic returns the agent's topic of the given kind.
func (a AgentID) Topic(k Kind) string {
	if a.s == "" {
		panic("topics: topic built from a zero AgentID")
	}
	return agentsRoot + a.s + "/" + string(k)
}

// Status returns the agent's retained presence topic.
func (a AgentID) Status() string {
	if a.s == "" {
		panic("topics: topic built from a zero AgentID")
	}
	return statusRoot + "agents/" + a.s
}

// RemoteSupport returns the tenant's retained live-indicator topic.
func (t TenantID) RemoteSupport() string {
	if t.s == "" {
		panic("topics: topic built from a zero TenantID")
	}
	return tenantsRoot + t.s + "/remote-support"
}

// CommandFeed returns the tenant's retained feed of recent commands: what
// was done on its hosts, by whom, with what outcome (never the content).
func (t TenantID) CommandFeed() string {
	if t.s == "" {
		panic("topics: topic built from a zero TenantID")
	}
	return tenantsRoot + t.s + "/commands"
}

// TenantStatusFilter is the subscription filter for everything about one
// tenant's status.
func (t TenantID) TenantStatusFilter() string {
	return tenantsRoot + t.s + "/#"
}

// AgentFilter returns the server's subscription filter for one kind of
// topic across all agents ("argus/v1/agents/+/heartbeat").
func AgentFilter(k Kind) string { return agentsRoot + "+/" + string(k) }

// StatusFilter is the filter for every status topic.
const StatusFilter = statusRoot + "#"

// StatusRoot is the prefix of every status topic.
const StatusRoot = statusRoot

// StatusPrefix is the prefix of every status topic about one tenant.
func (t TenantID) StatusPrefix() string { return tenantsRoot + t.s + "/" }

// ServerStatus is the retained server summary topic.
const ServerStatus = statusRoot + "server"

// ParseAgentTopic splits a concrete agent topic into its agent and kind.
// It accepts only exact topics this package builds: no wildcards, no
// prefixes, no trailing levels.
func ParseAgentTopic(topic string) (AgentID, Kind, bool) {
	rest, ok := strings.CutPrefix(topic, agentsRoot)
	if !ok || len(rest) < 38 || rest[36] != '/' {
		return AgentID{}, "", false
	}
	id, err := ParseAgentID(rest[:36])
	if err != nil {
		return AgentID{}, "", false
	}
	k := Kind(rest[37:])
	for _, known := range agentKinds {
		if k == known {
			return id, k, true
		}
	}
	return AgentID{}, "", false
}
