package audit

import "testing"

// BenchmarkPrepare is the work an audited command does before its rows
// wait for a place in the chain: both rows encoded, on the caller's
// goroutine. Every string is already storable, as nearly all are.
func BenchmarkPrepare(b *testing.B) {
	e := benchEntry()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := prepare(e); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEntry() Entry {
	return Entry{Actor: "operator:alice", OperatorID: "7c1e2a9b-4d3f-4e8a-9b1c-2d3e4f5a6b7c", Action: "support.command.completed",
		Outcome: Success, TenantID: "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a", AgentID: "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b",
		SessionID: "3f4a5b6c-7d8e-4f9a-0b1c-2d3e4f5a6b7c", ClientIP: "127.0.0.1",
		Detail: map[string]any{"command": "ping", "command_id": "4a5b6c7d-8e9f-4a0b-1c2d-3e4f5a6b7c8d", "status": "succeeded",
			"code": "", "duration": "1.234ms", "result_bytes": 42}}
}

// BenchmarkStorable is what making every string storable adds to
// BenchmarkPrepare when, as nearly always, nothing needs changing.
func BenchmarkStorable(b *testing.B) {
	e := benchEntry()
	b.ReportAllocs()
	for b.Loop() {
		e = storable(e)
	}
}
