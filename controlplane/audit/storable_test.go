package audit_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/reconcile"
	"github.com/argus-remote/argus/internal/testenv"
)

// hostile is an entry with a NUL and invalid UTF-8 in every string the
// database would refuse: text columns refuse both, jsonb refuses \u0000,
// lone surrogates and numbers beyond numeric's range.
func hostile(action string) audit.Entry {
	return audit.Entry{
		Actor: "operator:ali\x00ce\xff", OperatorID: "7c1e2a9b-4d3f-4e8a-9b1c-2d3e4f5a6b7c\x00", Action: action, Outcome: audit.Denied,
		TenantID: "tenant\x00", AgentID: "\xc3\x28", SessionID: "s\x00", ClientIP: "10.0.0.1\x00", Reason: "why\x00 not \xe2\x82",
		Detail: map[string]any{
			"path":       "/v1/support/sessions/%00/\x00commands",
			"ke\x00y":    "value",
			"bad\xffkey": []any{"a\x00", map[string]any{"n\x00ested": "\xc3", "ok": 1}},
			"strings":    []string{"x\x00", "\xf0\x9f"},
			"labels":     map[string]string{"l\x00": "v\xfe"},
			"result":     json.RawMessage(`{"code":"bad\u0000code","lone":"\ud800 and \udc00","pair":"\ud83d\ude00"}`),
			"number":     json.Number("1e999999"),
			"when":       time.Date(2026, 11, 26, 2, 0, 0, 0, time.UTC),
			"struct": struct {
				Name string `json:"name"`
			}{"n\x00\xff"},
		},
	}
}

// readBack returns what the audit_log row of action says.
func readBack(t *testing.T, ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, action string) (actor, reason string, detail map[string]any) {
	t.Helper()
	require.NoError(t, q.QueryRow(ctx, "SELECT actor, reason, detail FROM audit_log WHERE action = $1 LIMIT 1", action).Scan(&actor, &reason, &detail))
	return actor, reason, detail
}

func TestRecord_NULAndInvalidUTF8AreStoredInBothRows(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	c := audit.NewCommitter(pool)
	defer c.Close()

	require.NoError(t, audit.Write(ctx, pool, hostile("test.hostile.alone")), "Record in a transaction of its own")
	require.NoError(t, c.Write(ctx, hostile("test.hostile.committer")), "Record through the committer")
	require.NoError(t, c.Exec(ctx, nil, hostile("test.hostile.pipelined"), hostile("test.hostile.pipelined")), "pipelined rows")
	// Ids in spellings uuid.Parse reads and PostgreSQL does not, an address with a zone.
	require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "test.hostile.ids", Outcome: audit.Denied,
		TenantID: "urn:uuid:1D2E3F4A-5B6C-4D7E-8F9A-0B1C2D3E4F5A", AgentID: "{2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b}",
		SessionID: "3f4a5b6c7d8e4f9a0b1c2d3e4f5a6b7c", ClientIP: "fe80::1%eth0"}))

	var logs, events int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action LIKE 'test.hostile.%'").Scan(&logs))
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE action LIKE 'test.hostile.%'").Scan(&events))
	assert.Equal(t, 5, logs)
	assert.Equal(t, 5, events)

	// One spelling: each invalid byte is U+FFFD, NUL is U+2400.
	actor, reason, detail := readBack(t, ctx, pool, "test.hostile.alone")
	assert.Equal(t, "operator:ali\u2400ce\ufffd", actor)
	assert.Equal(t, "why\u2400 not \ufffd\ufffd", reason)
	assert.Equal(t, "/v1/support/sessions/%00/\u2400commands", detail["path"])
	assert.Equal(t, "value", detail["ke\u2400y"])
	assert.Equal(t, []any{"a\u2400", map[string]any{"n\u2400ested": "\ufffd", "ok": float64(1)}}, detail["bad\ufffdkey"])
	assert.Equal(t, []any{"x\u2400", "\ufffd\ufffd"}, detail["strings"])
	assert.Equal(t, map[string]any{"l\u2400": "v\ufffd"}, detail["labels"])
	assert.Equal(t, map[string]any{"code": "bad\u2400code", "lone": "\ufffd and \ufffd", "pair": "\U0001F600"}, detail["result"])
	assert.Equal(t, map[string]any{"name": "n\u2400\ufffd"}, detail["struct"])
	assert.Equal(t, "1e999999", detail["number"], "a number numeric cannot hold is kept as its spelling")
	assert.Equal(t, "7c1e2a9b-4d3f-4e8a-9b1c-2d3e4f5a6b7c\u2400", detail["operator_id"])

	var payload string
	require.NoError(t, pool.QueryRow(ctx, "SELECT payload->>'client_ip' FROM events WHERE action = 'test.hostile.alone'").Scan(&payload))
	assert.Equal(t, "10.0.0.1\u2400", payload)

	r, err := reconcile.Run(ctx, pool, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
	require.NoError(t, err)
	assert.True(t, r.Clean, "%s", r.Text())
	assert.Equal(t, 5, r.Events)
	var tenant, ip string
	require.NoError(t, pool.QueryRow(ctx, "SELECT tenant_id::text, host(client_ip) FROM audit_log WHERE action = 'test.hostile.ids'").Scan(&tenant, &ip))
	assert.Equal(t, "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a", tenant)
	assert.Equal(t, "fe80::1", ip)
	ok, err := reconcileWindow(ctx, pool)
	require.NoError(t, err)
	assert.True(t, ok, "every hash recomputes")
}

// Strings past the bounds are cut, not refused, and the row says so.
func TestRecord_OversizedStringsAndDetailAreBounded(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	huge := strings.Repeat("é", 40<<10) // 80 KiB
	deep := any("bottom")
	for range 2000 {
		deep = []any{deep}
	}
	require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "test.huge", Outcome: audit.Success, Reason: huge,
		Detail: map[string]any{"blob": strings.Repeat("x", 2<<20)}}))
	require.NoError(t, audit.Write(ctx, pool, audit.Entry{Actor: "system", Action: "test.deep", Outcome: audit.Success,
		Detail: map[string]any{"deep": deep, "nan": []any{json.Number("NaN")}}}))

	_, reason, detail := readBack(t, ctx, pool, "test.huge")
	assert.Less(t, len(reason), 65<<10)
	assert.True(t, strings.HasPrefix(reason, huge[:1000]))
	assert.Contains(t, reason, "truncated")
	assert.NotContains(t, detail, "blob", "a detail over the bound is replaced by its size and digest")
	assert.EqualValues(t, 2<<20+11, detail["omitted_bytes"])

	r, err := reconcile.Run(ctx, pool, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
	require.NoError(t, err)
	assert.True(t, r.Clean, "%s", r.Text())
}

// storableNumber is checked against PostgreSQL's own jsonb input.
func TestStorableNumber_AgreesWithPostgreSQL(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	for _, n := range []string{
		"0", "-0", "1", "-1", "0.1", "1e-7", "1e21", "1E+2", "12345678901234567890", "5e-324", "1.7976931348623157e308",
		"1e-16383", "1e-16384", "0e-16383", "0e-16384", "0.5e-16382", "0.5e-16383", "100e-16385", "0e200000",
		"1e131071", "1e131072", "10e131071", "1.5e131071", "0.1e131072", "0.1e131073", "0.001e131074", "0.001e131075",
		"1e999999", "1e-999999", "1e99999999999", "NaN", "Infinity", "01", "1.", ".5", "+1", "1e", "--1", "1x", "",
	} {
		var ok bool
		err := pool.QueryRow(ctx, "SELECT $1::jsonb IS NOT NULL", `{"n":`+n+`}`).Scan(&ok)
		assert.Equal(t, err == nil, audit.StorableNumber(n), "%s: PostgreSQL says %v", n, err)
	}
}
