package auditstream

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// SDID is the structured-data element every message carries. An SD-ID
// without an "@" is reserved to IANA, so this one names an enterprise
// number: 32473, the one RFC 5612 sets aside for documentation and
// examples, since ARGUS has none of its own.
const SDID = "argus@32473"

// AppName is the RFC 5424 APP-NAME of every message.
const AppName = "argus-server"

// Facility 13 is "log audit" (RFC 5424 §6.2.1).
const facility = 13

// Severities by outcome: refusals and failures stand out from the rest.
func severity(outcome string) int {
	switch outcome {
	case "success":
		return 6 // informational
	case "denied":
		return 5 // notice
	default:
		return 4 // warning: failure, unknown
	}
}

// MinMessage is the smallest message bound allowed: every message's fixed
// parameters (seq, hash, ids, outcome) and its truncation note fit in it.
const MinMessage = 2048

// event is one events row as it is streamed.
type event struct {
	Seq        int64
	Hash       []byte
	OccurredAt time.Time
	// Canonical is the row's canonical bytes (the ones its hash covers),
	// or its payload for rows written before those were kept.
	Canonical []byte
}

// payload is the part of an event's canonical JSON that is streamed.
// Detail stays as its canonical bytes.
type payload struct {
	ID         string          `json:"id"`
	Actor      string          `json:"actor"`
	OperatorID string          `json:"operator_id"`
	Action     string          `json:"action"`
	Outcome    string          `json:"outcome"`
	TenantID   string          `json:"tenant_id"`
	AgentID    string          `json:"agent_id"`
	SessionID  string          `json:"session_id"`
	ClientIP   string          `json:"client_ip"`
	Reason     string          `json:"reason"`
	Detail     json.RawMessage `json:"detail"`
}

// format renders ev as one RFC 5424 message (without its octet-counting
// frame) of at most max bytes. When the whole would be longer, the free
// text is cut, least important first (detail, reason, actor, action),
// each on a UTF-8 boundary, and the message says so in its "truncated"
// parameter ("detail:123456" is a detail of 123456 bytes, cut): the
// full event stays in PostgreSQL, and its hash, always sent, lets the
// receiver check the copy it fetches from there.
func format(ev event, hostname string, procID int, max int) ([]byte, error) {
	var p payload
	if err := json.Unmarshal(ev.Canonical, &p); err != nil {
		return nil, fmt.Errorf("event %d: %w", ev.Seq, err)
	}
	detail := string(p.Detail)
	if detail == "" || detail == "null" {
		detail = "{}"
	}
	values := map[string]string{
		"seq": strconv.FormatInt(ev.Seq, 10), "hash": hex.EncodeToString(ev.Hash), "id": p.ID,
		"action": p.Action, "outcome": p.Outcome, "actor": p.Actor, "tenant": p.TenantID, "session": p.SessionID,
		"agent": p.AgentID, "operator": p.OperatorID, "ip": p.ClientIP, "reason": p.Reason, "detail": detail,
	}
	// PARAM-VALUE is UTF-8 (canonical JSON always is; this is a guard).
	for k, v := range values {
		values[k] = strings.ToValidUTF8(v, "\uFFFD")
	}
	head := fmt.Sprintf("<%d>1 %s %s %s %d audit [%s", facility*8+severity(p.Outcome),
		ev.OccurredAt.UTC().Format("2006-01-02T15:04:05.000000Z"), headerField(hostname, 255), AppName, procID, SDID)
	render := func() []byte {
		var b strings.Builder
		b.Grow(max)
		b.WriteString(head)
		for _, name := range paramOrder {
			if v := values[name]; v != "" {
				b.WriteString(" " + name + `="`)
				escapeTo(&b, v)
				b.WriteByte('"')
			}
		}
		b.WriteByte(']')
		return []byte(b.String())
	}

	msg := render()
	if len(msg) <= max {
		return msg, nil
	}
	var notes []string
	for _, name := range cutOrder {
		v := values[name]
		if v == "" {
			continue
		}
		notes = append(notes, name+":"+strconv.Itoa(len(v)))
		values["truncated"] = strings.Join(notes, ",")
		over := len(render()) - max
		if over <= 0 {
			break
		}
		values[name] = cutEscaped(v, escapedLen(v)-over)
		if msg = render(); len(msg) <= max {
			return msg, nil
		}
	}
	if msg = render(); len(msg) > max {
		return nil, fmt.Errorf("event %d: %d bytes left after every cut, over the bound of %d", ev.Seq, len(msg), max)
	}
	return msg, nil
}

// paramOrder is the order of the SD-PARAMs in a message; empty ones are
// left out.
var paramOrder = []string{"seq", "hash", "action", "outcome", "actor", "tenant", "session", "agent",
	"operator", "ip", "id", "reason", "detail", "truncated"}

// cutOrder is the free text cut from a message too long, first to last.
var cutOrder = []string{"detail", "reason", "actor", "action"}

// escapeTo writes v as an SD-PARAM value: '"', '\' and ']' escaped with a
// backslash (RFC 5424 §6.3.3).
func escapeTo(b *strings.Builder, v string) {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '"', '\\', ']':
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
}

func escapedLen(v string) int {
	n := len(v)
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '"', '\\', ']':
			n++
		}
	}
	return n
}

// cutEscaped returns the longest prefix of v, ending on a rune boundary,
// whose escaped form is at most n bytes.
func cutEscaped(v string, n int) string {
	size := 0
	for i, r := range v {
		w := utf8.RuneLen(r)
		if r == '"' || r == '\\' || r == ']' {
			w++
		}
		if size+w > n {
			return v[:i]
		}
		size += w
	}
	return v
}

// headerField is a header field as RFC 5424 allows it: printable US-ASCII
// without spaces, at most n bytes, "-" when empty.
func headerField(v string, n int) string {
	var b strings.Builder
	for i := 0; i < len(v) && b.Len() < n; i++ {
		if c := v[i]; c > 32 && c < 127 {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

// frame prefixes msg with its octet count (RFC 6587 §3.4.1).
func frame(dst, msg []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, ' ')
	return append(dst, msg...)
}
