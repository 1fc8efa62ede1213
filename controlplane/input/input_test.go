package input

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestID_Canonicalises(t *testing.T) {
	want := "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	for _, in := range []string{
		want, strings.ToUpper(want), "{" + want + "}", "urn:uuid:" + want, strings.ReplaceAll(want, "-", ""),
	} {
		got, ok := ID(in)
		assert.True(t, ok, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "x", want + "0", "6ba7b810-9dad-11d1-80b4-00c04fd430c\x00"} {
		_, ok := ID(in)
		assert.False(t, ok, in)
	}
}

func TestText_RefusesNULInvalidUTF8AndLength(t *testing.T) {
	assert.Nil(t, Text("reason", "INC-1: stream drops at site 4 — ünïcode", 1024))
	assert.Equal(t, CodeInvalidText, Text("reason", "a\x00b", 0).Code)
	assert.Equal(t, CodeInvalidText, Text("reason", "a\xffb", 0).Code)
	assert.Equal(t, CodeTooLong, Text("reason", strings.Repeat("x", 1025), 1024).Code)
	// Characters, not bytes: 1,024 two-byte characters fit.
	assert.Nil(t, Text("reason", strings.Repeat("é", 1024), 1024))
	assert.Contains(t, Text("reason", "\x00", 0).Message, "reason")
}

func TestJSON_FindsEscapedNULOnly(t *testing.T) {
	for doc, bad := range map[string]bool{
		`{"path":"a\u0000b"}`:           true,
		`{"a\u0000":1}`:                 true,
		`{"path":"\\\u0000"}`:           true,  // an escaped backslash, then a NUL
		`{"path":"\\u0000"}`:            false, // the text \u0000
		`{"path":"\\\\u0000"}`:          false,
		`{"path":"\u00001"}`:            true,
		`{"path":"\u0001"}`:             false,
		`{"lines":10,"path":"a\ud800"}`: false, // PostgreSQL's problem only when stored raw
		"{\"path\":\"\xff\"}":           true,
		`{}`:                            false,
	} {
		got := JSON("args", []byte(doc))
		assert.Equal(t, bad, got != nil, doc)
	}
}
