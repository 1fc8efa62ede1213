package audit_test

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/reconcile"
	"github.com/argus-remote/argus/internal/testenv"
)

// jsonb keeps numbers by value and respells them (1e-7 reads back as
// 0.0000001, 1e21 as 1000000000000000000000, -0 as 0), while the hash
// covers the bytes as encoded. Honest rows with such numbers must still
// verify: an operator past the gate chooses a command's arguments.
func TestRecord_AwkwardNumbersVerify(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	c := audit.NewCommitter(pool)
	defer c.Close()

	// As the command path decodes them: float64 for every number.
	var args any
	require.NoError(t, json.Unmarshal([]byte(`{"lines":1e-7,"big":1e21,"neg_zero":-0,"tenth":0.1,"int":12345678901234567890,
		"tiny":5e-324,"max":1.7976931348623157e308,"list":[1E+2,-1.5e-10,0.000001,1e20]}`), &args))
	entry := func(action string) audit.Entry {
		return audit.Entry{Actor: "operator:alice", Action: action, Outcome: audit.Success, ClientIP: "10.0.0.1",
			Detail: map[string]any{"command": "tail_log", "args": args, "neg_zero": math.Copysign(0, -1),
				"int64": int64(math.MaxInt64), "uint64": uint64(math.MaxUint64), "exact": json.Number("12345678901234567890.500"),
				"float32": float32(1e-7)}}
	}
	require.NoError(t, audit.Write(ctx, pool, entry("support.command.requested")))
	require.NoError(t, c.Exec(ctx, nil, entry("support.command.requested"), entry("support.command.completed")))
	require.NoError(t, c.Write(ctx, entry("support.command.completed")))

	var respelled string
	require.NoError(t, pool.QueryRow(ctx, "SELECT payload->'detail'->'args'->>'lines' FROM events ORDER BY seq LIMIT 1").Scan(&respelled))
	require.Equal(t, "0.0000001", respelled, "jsonb respells the number (the premise of this test)")

	r, err := reconcile.Run(ctx, pool, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
	require.NoError(t, err)
	assert.True(t, r.Clean, "%s", r.Text())
	assert.Equal(t, 4, r.Events)
	ok, err := reconcileWindow(ctx, pool)
	require.NoError(t, err)
	assert.True(t, ok, "every hash recomputes from what is stored")
}
