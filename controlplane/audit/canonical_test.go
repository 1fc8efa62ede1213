package audit_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/audit"
)

// reference is the definition Canonical must keep to: encoding/json
// decoding into interface values with json.Number, then encoding again.
// Every hash in the chain, stored or to come, depends on these bytes.
func reference(raw []byte) ([]byte, error) {
	compact, err := json.Marshal(json.RawMessage(raw))
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(compact))
	dec.UseNumber()
	var generic any
	if err := dec.Decode(&generic); err != nil {
		return nil, err
	}
	return json.Marshal(generic)
}

var canonicalSeeds = []string{
	`{"b":1,"a":"x"}`,
	`{"z":{"y":[3,2,{"b":null,"a":true}]},"a":false}`,
	`{"k":1,"k":2,"j":0}`,
	` { "n" : -0.0e+10 , "m" : 1E400 , "l" : 12345678901234567890 } `,
	`{"html":"<a href=\"x\">&</a>","ctl":"\u0001\t\n","uni":"é \u2028 \u2029 😀"}`,
	`{"bad":"\ud800 lone","pair":"\ud83d\ude00","esc":"\/\b\f"}`,
	"{\"raw\":\"\xff\xfe invalid utf-8\"}",
	`{"\u00e9":1,"e":2,"é":3,"E":4}`,
	`[1,"two",[],{},null]`,
	`"just a string"`,
	`42`,
	`{"a":[{"c":1,"b":2}],"":"empty key"}`,
}

func TestCanonical_MatchesTheReferenceEncoding(t *testing.T) {
	for _, in := range canonicalSeeds {
		want, err := reference([]byte(in))
		require.NoError(t, err, in)
		got, err := audit.Canonical(json.RawMessage(in))
		require.NoError(t, err, in)
		assert.Equal(t, string(want), string(got), in)
	}
}

func TestCanonical_EncodesValuesLikeTheirJSON(t *testing.T) {
	ev := audit.Event{ID: "1", Actor: "alice <ops>", Action: "x", Outcome: "success",
		Detail: map[string]any{"z": 1.5, "a": []any{"b", map[string]any{"y": 2, "x": nil}}}}
	raw, err := json.Marshal(ev)
	require.NoError(t, err)
	want, err := reference(raw)
	require.NoError(t, err)
	got, err := audit.Canonical(ev)
	require.NoError(t, err)
	assert.Equal(t, string(want), string(got))
}

func TestCanonical_RefusesInvalidJSON(t *testing.T) {
	for _, in := range []string{``, `{`, `{"a":}`, `[1,]`, `{"a" 1}`, `"open`, `{"a":1}x`, `nul`} {
		_, err := audit.Canonical(json.RawMessage(in))
		assert.Error(t, err, in)
	}
}

func FuzzCanonical(f *testing.F) {
	for _, s := range canonicalSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		want, werr := reference(in)
		got, gerr := audit.Canonical(json.RawMessage(in))
		if werr != nil || gerr != nil {
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("input %q: reference error %v, Canonical error %v", in, werr, gerr)
			}
			return
		}
		if !bytes.Equal(want, got) {
			t.Fatalf("input %q:\nreference %s\nCanonical %s", in, want, got)
		}
	})
}

func BenchmarkCanonical(b *testing.B) {
	ev := audit.Event{ID: "0b9d6c5e-7f0a-4b55-9a57-3f2c1d0e8a61", OccurredAt: "2026-11-26T02:27:04.123456Z", Actor: "operator:alice",
		OperatorID: "7c1e2a9b-4d3f-4e8a-9b1c-2d3e4f5a6b7c", Action: "support.command.completed", Outcome: "success",
		TenantID: "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a", AgentID: "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b",
		SessionID: "3f4a5b6c-7d8e-4f9a-0b1c-2d3e4f5a6b7c", ClientIP: "127.0.0.1",
		Detail: map[string]any{"command": "ping", "command_id": "4a5b6c7d-8e9f-4a0b-1c2d-3e4f5a6b7c8d", "status": "succeeded",
			"code": "", "duration": "1.234ms", "result_bytes": 42}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := audit.Canonical(ev); err != nil {
			b.Fatal(err)
		}
	}
}
