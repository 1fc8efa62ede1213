// Package input checks and normalises what callers and agents send before
// it reaches a row, a cache key or an audit entry: identifiers get their one
// canonical spelling, and text must be valid UTF-8 without NUL and no
// longer than its column allows. PostgreSQL would refuse such text with an
// error; checking first turns that into a clear, stable refusal.
package input

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Stable codes for refused text.
const (
	// CodeInvalidText is text that is not valid UTF-8 or holds a NUL.
	CodeInvalidText = "invalid_text"
	// CodeTooLong is text over its documented limit.
	CodeTooLong = "value_too_long"
)

// Error is refused input: a stable code and a message naming the field.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ID returns a UUID in the one spelling every table, cache and topic uses
// (lower case, hyphenated). uuid.Parse also takes upper case, braces,
// "urn:uuid:" and no hyphens; used as sent, such a spelling would be a
// cache key no eviction touches and an audit field that differs between
// the two trails.
func ID(s string) (string, bool) {
	u, err := uuid.Parse(s)
	if err != nil {
		return "", false
	}
	return u.String(), true
}

// Text checks one field: valid UTF-8, no NUL, at most max characters
// (max <= 0: no limit). Characters, not bytes, as PostgreSQL's length()
// counts them.
func Text(field, s string, max int) *Error {
	if !clean(s) {
		return &Error{Code: CodeInvalidText, Message: field + ": not valid UTF-8 text (or holds a NUL)"}
	}
	if max > 0 && len(s) > max && utf8.RuneCountInString(s) > max {
		return &Error{Code: CodeTooLong, Message: fmt.Sprintf("%s: longer than %d characters", field, max)}
	}
	return nil
}

func clean(s string) bool {
	return strings.IndexByte(s, 0) < 0 && utf8.ValidString(s)
}

// JSON checks a JSON document's text: the bytes are valid UTF-8 and no
// string or key holds an escaped NUL (\u0000), which Go decodes but
// PostgreSQL's jsonb and text refuse. It does not check the syntax.
func JSON(field string, doc []byte) *Error {
	if !utf8.Valid(doc) || escapedNUL(doc) {
		return &Error{Code: CodeInvalidText, Message: field + ": not valid UTF-8 text (or holds a NUL)"}
	}
	return nil
}

// escapedNUL reports whether doc holds the escape \u0000. A backslash
// starts an escape only when an even number of backslashes precede it, so
// the text `\\u0000` (an escaped backslash, then "u0000") is not one.
func escapedNUL(doc []byte) bool {
	run := 0 // backslashes in a row before i
	for i := 0; i < len(doc); i++ {
		if doc[i] != '\\' {
			run = 0
			continue
		}
		if run%2 == 0 && i+5 < len(doc) && doc[i+1] == 'u' &&
			doc[i+2] == '0' && doc[i+3] == '0' && doc[i+4] == '0' && doc[i+5] == '0' {
			return true
		}
		run++
	}
	return false
}
