package audit

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestCleanString_OneSpelling(t *testing.T) {
	for in, want := range map[string]string{
		"":                     "",
		"plain ascii":          "plain ascii",
		"é ✓ 😀":                "é ✓ 😀",
		"nul\x00here":          "nul\u2400here",
		"\x00\x00":             "\u2400\u2400",
		"bad \xff byte":        "bad \ufffd byte",
		"two \xe2\x82 bytes":   "two \ufffd\ufffd bytes", // one U+FFFD per byte, as encoding/json spells it
		"\xed\xa0\x80":         "\ufffd\ufffd\ufffd",     // a surrogate encoded in UTF-8 is not UTF-8
		"literal \u2400 stays": "literal \u2400 stays",
	} {
		got, changed := cleanString(in)
		assert.Equal(t, want, got, "%q", in)
		assert.Equal(t, want != in, changed, "%q", in)
		raw, err := json.Marshal(in)
		if assert.NoError(t, err) && want == in {
			var back string
			assert.NoError(t, json.Unmarshal(raw, &back))
		}
	}
}

func TestCleanField_CutsAtACharacterBoundary(t *testing.T) {
	s := "a" + repeat("é", maxFieldBytes) // 1 + 128 KiB bytes
	got := cleanField(s)
	assert.True(t, utf8.ValidString(got))
	cut := strings.Index(got, "…")
	assert.Equal(t, maxFieldBytes-1, cut, "the last whole character that fits")
	assert.Equal(t, "…[truncated 65538 bytes]", got[cut:])
	assert.Equal(t, s[:cut], got[:cut])
	assert.Equal(t, "short", cleanField("short"))
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}

// Clean entries, as nearly all are, cost no allocation and keep their
// detail map.
func TestStorable_CleanEntryIsKeptAsItIs(t *testing.T) {
	e := Entry{Actor: "operator:alice", Action: "support.command", Outcome: Success, ClientIP: "10.0.0.1", Reason: "INC-7 é",
		Detail: map[string]any{"command": "tail_log", "n": 3, "f": 0.5, "args": map[string]any{"lines": 200.0, "log": "streamer"},
			"list": []any{"a", 1.0, nil, true}, "factors": []string{"ops_token"}, "labels": map[string]string{"k": "v"}, "at": time.Unix(0, 0).UTC(),
			"raw": json.RawMessage(`{"a":[1,2.5e3,"x"]}`)}}
	allocs := testing.AllocsPerRun(100, func() { e = storable(e) })
	assert.Zero(t, allocs)
	got := storable(e)
	got.Detail["marker"] = true
	assert.Equal(t, true, e.Detail["marker"], "the same map, not a copy")
}

func TestStorable_NeverChangesTheCallersDetail(t *testing.T) {
	inner := map[string]any{"k\x00": "v\x00"}
	list := []any{"a\x00"}
	d := map[string]any{"inner": inner, "list": list, "s\xff": 1}
	got := storable(Entry{Detail: d}).Detail
	assert.Equal(t, map[string]any{"inner": map[string]any{"k\u2400": "v\u2400"}, "list": []any{"a\u2400"}, "s\ufffd": 1}, got)
	assert.Equal(t, map[string]any{"k\x00": "v\x00"}, inner)
	assert.Equal(t, []any{"a\x00"}, list)
	assert.Contains(t, d, "s\xff")
}

func TestStorable_KeysThatCleanAlikeKeepOneValue(t *testing.T) {
	got := storable(Entry{Detail: map[string]any{"a\u2400": "clean", "a\x00": "nul", "b\x00": 1, "b\xff\x00"[:2]: 2}}).Detail
	assert.Equal(t, "clean", got["a\u2400"], "the key already storable keeps its value")
	assert.Equal(t, 1, got["b\u2400"])
	assert.Equal(t, 2, got["b\ufffd"])
	assert.Len(t, got, 3)
}

func TestPlain_EveryPosition(t *testing.T) {
	for n := range 20 {
		base := strings.Repeat("a", n)
		assert.True(t, plain(base))
		for i := range n {
			for _, b := range []byte{0, 0x80, 0xff, 0xc3} {
				s := []byte(base)
				s[i] = b
				assert.False(t, plain(string(s)), "%q", s)
			}
			s := []byte(base)
			s[i] = 0x7f
			assert.True(t, plain(string(s)))
			s[i] = 1
			assert.True(t, plain(string(s)))
		}
	}
}
