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

// feedEvery bounds how often a tenant's feed is published. A busy
// tenant's commands complete every few milliseconds, and each publish of
// its feed (its last FeedMax commands) goes to every node of a cluster,
// which merges it into the one it holds: published at most this often,
// a feed costs the same at any rate of commands, and a viewer sees the
// commands of one interval together.
const feedEvery = 50 * time.Millisecond

// feedCommand adds a completed command, whose completion has committed,
// to its tenant's feed, which publishFeeds publishes. The feed is kept in
// memory, newest first and bounded, and retained on the broker, so a page
// opened mid-session shows what came before it; it starts empty when the
// server does.
func (m *Manager) feedCommand(s session, e topics.FeedEntry) {
	if _, err := topics.ParseTenantID(s.tenantID); err != nil {
		return
	}
	e.SessionID, e.AgentID, e.CompletedAt = s.id, s.agentID, time.Now().UTC()
	m.feedMu.Lock()
	// A new list each time: one taken by publishFeeds is never changed.
	list := append([]topics.FeedEntry{e}, m.feed[s.tenantID]...)
	if len(list) > topics.FeedMax {
		list = list[:topics.FeedMax]
	}
	m.feed[s.tenantID] = list
	m.feedDirty[s.tenantID] = true
	m.feedMu.Unlock()
	select {
	case m.feedWake <- struct{}{}:
	default:
	}
}

// publishFeeds publishes each tenant's feed once it has changed, at most
// once a feedEvery, and at once when FlushFeeds asks, until Stop. It alone
// publishes feeds, so an older list is never retained after a newer one.
func (m *Manager) publishFeeds() {
	defer close(m.feedDone)
	pause := time.NewTimer(0)
	<-pause.C
	for {
		select {
		case <-m.feedWake:
		case done := <-m.feedFlush:
			m.flushFeeds()
			close(done)
			continue
		case <-m.stop:
			return
		}
		m.flushFeeds()
		pause.Reset(feedEvery)
	paused:
		for {
			select {
			case <-pause.C:
				break paused
			case done := <-m.feedFlush:
				m.flushFeeds()
				close(done)
			case <-m.stop:
				return
			}
		}
	}
}

// FlushFeeds publishes at once the feeds still waiting for their interval.
// A stopping node calls it once its API has answered its last call and
// before its broker, which carries the feeds to the other nodes, closes:
// the tenant sees every command, up to the last.
func (m *Manager) FlushFeeds() {
	if !m.workersRun {
		return
	}
	done := make(chan struct{})
	select {
	case m.feedFlush <- done:
		<-done
	case <-m.feedDone:
	}
}

// flushFeeds publishes the feeds changed since it last ran.
func (m *Manager) flushFeeds() {
	m.feedMu.Lock()
	lists := make(map[string][]topics.FeedEntry, len(m.feedDirty))
	for tenant := range m.feedDirty {
		lists[tenant] = m.feed[tenant]
	}
	clear(m.feedDirty)
	m.feedMu.Unlock()
	for tenant, list := range lists {
		tid, _ := topics.ParseTenantID(tenant)
		b, err := json.Marshal(topics.FeedMsg{V: topics.Version, TenantID: tenant, Entries: list, Time: list[0].CompletedAt})
		if err == nil {
			err = m.Broker.Publish(tid.CommandFeed(), b, true, 1, nil)
		}
		if err != nil {
			m.Log.Error("publish command feed", "tenant", tenant, "err", err)
		}
	}
}

// operatorName is the operator an audit actor names.
func operatorName(actor string) string {
	return strings.TrimPrefix(actor, "operator:")
}
