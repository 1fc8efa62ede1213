package acl

import (
	"testing"

	"github.com/argus-remote/argus/topics"
)

// BenchmarkAllow is the check mochi runs on every delivery.
func BenchmarkAllow(b *testing.B) {
	p, _ := newPolicy()
	p.SetActive(agentA, true)
	topic := mustID(agentA).Topic(topics.Commands)
	b.ReportAllocs()
	for b.Loop() {
		if !p.Allow(agentA, agentA, topic, false) {
			b.Fatal("refused")
		}
	}
}

// BenchmarkAuthenticateCached is a CONNECT whose credential is cached.
func BenchmarkAuthenticateCached(b *testing.B) {
	p, _ := newPolicy()
	req := connect(agentA, agentA, "secret-a")
	p.Authenticate(req)
	b.ReportAllocs()
	for b.Loop() {
		if !p.Authenticate(req) {
			b.Fatal("refused")
		}
	}
}
