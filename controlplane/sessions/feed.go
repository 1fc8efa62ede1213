package sessions

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/argus-remote/argus/topics"
)

// maxFeedName bounds a name (a log, a path, a camera, a patch id) as a
// feed entry repeats it, in characters.
const maxFeedName = 200

// feedName makes a name from a command's arguments or its agent's answer
// fit for the feed: printable, bounded.
func feedName(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if r := []rune(s); len(r) > maxFeedName {
		s = string(r[:maxFeedName]) + "…"
	}
	return s
}

// feedSummary says what a command touched, from its arguments and the
// sizes in its answer; it never carries content.
func feedSummary(name string, args, data json.RawMessage, succeeded bool) string {
	var a struct {
		Log    string `json:"log"`
		Lines  *int   `json:"lines"`
		Path   string `json:"path"`
		Camera string `json:"camera"`
	}
	_ = json.Unmarshal(args, &a)
	var d struct {
		Log    string            `json:"log"`
		Lines  []json.RawMessage `json:"lines"`
		Bytes  *int              `json:"bytes"`
		Camera string            `json:"camera"`
	}
	if succeeded {
		_ = json.Unmarshal(data, &d)
	}
	bytes := ""
	if d.Bytes != nil {
		bytes = fmt.Sprintf(", %d bytes", *d.Bytes)
	}
	switch name {
	case "tail_log":
		log := a.Log
		if log == "" {
			log = d.Log
		}
		s := "log " + feedName(log)
		switch {
		case succeeded:
			s += fmt.Sprintf(", %d lines", len(d.Lines))
		case a.Lines != nil:
			s += fmt.Sprintf(", %d lines asked", *a.Lines)
		}
		return s
	case "read_file":
		return "file " + feedName(a.Path) + bytes
	case "camera_view":
		return "camera " + feedName(a.Camera) + bytes
	case "get_capabilities":
		return "capability refresh"
	case "agent_info":
		return "agent information"
	case "ping":
		return "liveness check"
	}
	return ""
}

// patchSummary is the feed's account of a patch attempt.
func patchSummary(id, version string) string {
	return "patch " + feedName(id) + " version " + feedName(version)
}

// feedCommand adds a completed command, whose completion has committed,
// to its tenant's feed and publishes the feed. The feed is kept in
// memory, newest first and bounded, and retained on the broker, so a page
// opened mid-session shows what came before it; it starts empty when the
// server does.
func (m *Manager) feedCommand(s session, e topics.FeedEntry) {
	tid, err := topics.ParseTenantID(s.tenantID)
	if err != nil {
		return
	}
	e.SessionID, e.AgentID, e.CompletedAt = s.id, s.agentID, time.Now().UTC()
	m.feedMu.Lock()
	list := append([]topics.FeedEntry{e}, m.feed[s.tenantID]...)
	if len(list) > topics.FeedMax {
		list = list[:topics.FeedMax]
	}
	m.feed[s.tenantID] = list
	b, err := json.Marshal(topics.FeedMsg{V: topics.Version, TenantID: s.tenantID, Entries: list, Time: e.CompletedAt})
	// Published under the lock, so two completions cannot leave the older
	// list retained.
	if err == nil {
		err = m.Broker.Publish(tid.CommandFeed(), b, true, 1, nil)
	}
	m.feedMu.Unlock()
	if err != nil {
		m.Log.Error("publish command feed", "tenant", s.tenantID, "err", err)
	}
}

// operatorName is the operator an audit actor names.
func operatorName(actor string) string {
	return strings.TrimPrefix(actor, "operator:")
}
