package audit_test

import (
	"context"
	"testing"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/internal/testenv"
)

// BenchmarkWrite is one audited action: both rows and the chain head, in
// one transaction, on a real PostgreSQL.
func BenchmarkWrite(b *testing.B) {
	pool := testenv.Pool(b)
	ctx := context.Background()
	e := audit.Entry{Actor: "operator:alice", Action: "bench.write", Outcome: audit.Success, ClientIP: "10.0.0.1",
		Detail: map[string]any{"command": "ping"}}
	b.ReportAllocs()
	for b.Loop() {
		if err := audit.Write(ctx, pool, e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteParallel is audited actions from many goroutines, all on
// one chain.
func BenchmarkWriteParallel(b *testing.B) {
	pool := testenv.Pool(b)
	ctx := context.Background()
	e := audit.Entry{Actor: "operator:alice", Action: "bench.write", Outcome: audit.Success}
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := audit.Write(ctx, pool, e); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
