package topics

import (
	"crypto/ed25519"
	"testing"
	"time"
)

func benchCommand() CommandMsg {
	return CommandMsg{V: Version, ID: "c1", SessionID: "s1", TenantID: "t1", AgentID: agent, Name: "ping",
		IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Minute)}
}

func BenchmarkSign(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(nil)
	msg := benchCommand()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Sign(priv, PurposeCommand, msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	data, _ := Sign(priv, PurposeCommand, benchCommand())
	b.ReportAllocs()
	for b.Loop() {
		var m CommandMsg
		if err := Open(pub, PurposeCommand, data, MaxEnvelope, &m); err != nil {
			b.Fatal(err)
		}
	}
}
