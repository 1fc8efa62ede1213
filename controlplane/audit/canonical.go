package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"sync"
)

// Canonical encodes v the one way its hash is computed: JSON with object
// keys sorted and numbers kept as written. An event keeps these bytes
// (events.canonical) and its hash covers them. Events written before
// migration 0006 kept only the jsonb payload, whose hash is recomputed as
// Canonical of the payload read back: jsonb keeps strings, key order
// aside, but respells some numbers (1e-7 as 0.0000001), so this recovers
// the hashed bytes only of payloads whose numbers jsonb spells as Go does.
//
// The bytes are those of encoding/json decoding v's JSON into interface
// values (numbers as json.Number) and encoding them again: compact, keys in
// byte order with the last of duplicate keys kept, strings escaped as
// encoding/json escapes them (HTML characters too). It gets there in one
// pass over the JSON and without the interface values, since every audited
// action is hashed on the command path.
func Canonical(v any) ([]byte, error) {
	var raw []byte
	if r, ok := v.(json.RawMessage); ok {
		if !json.Valid(r) {
			return nil, errors.New("audit: canonical: invalid JSON")
		}
		raw = r
	} else {
		var err error
		if raw, err = json.Marshal(v); err != nil {
			return nil, err
		}
	}
	c := canonicalizers.Get().(*canonicalizer)
	defer func() {
		clear(c.members[:cap(c.members)]) // keys may point into the input
		c.in, c.out, c.members, c.scratch = nil, nil, c.members[:0], c.scratch[:0]
		if cap(c.scratch) <= maxKeptScratch {
			canonicalizers.Put(c)
		}
	}()
	c.in, c.pos, c.out = raw, 0, make([]byte, 0, len(raw))
	if err := c.value(); err != nil {
		return nil, err
	}
	return c.out, nil
}

// canonicalizers keep their member stacks and scratch buffers between
// calls; one that grew past maxKeptScratch is let go.
var canonicalizers = sync.Pool{New: func() any { return new(canonicalizer) }}

const maxKeptScratch = 64 << 10

// canonicalizer reads valid JSON from in and appends it, canonical, to out.
type canonicalizer struct {
	in  []byte
	pos int
	out []byte
	// members is a stack: the members of each open object, above those
	// of the object it is in.
	members []member
	scratch []byte // an object's values while it is rebuilt in order
}

func (c *canonicalizer) skipSpace() {
	for c.pos < len(c.in) {
		switch c.in[c.pos] {
		case ' ', '\t', '\n', '\r':
			c.pos++
		default:
			return
		}
	}
}

var errTruncated = errors.New("audit: canonical: truncated JSON")

func (c *canonicalizer) value() error {
	c.skipSpace()
	if c.pos >= len(c.in) {
		return errTruncated
	}
	switch b := c.in[c.pos]; {
	case b == '{':
		return c.object()
	case b == '[':
		return c.array()
	case b == '"':
		s, err := c.str()
		if err != nil {
			return err
		}
		c.out = appendString(c.out, s)
		return nil
	default: // number, true, false, null: as written
		start := c.pos
		for c.pos < len(c.in) && !isDelim(c.in[c.pos]) {
			c.pos++
		}
		c.out = append(c.out, c.in[start:c.pos]...)
		return nil
	}
}

func isDelim(b byte) bool {
	switch b {
	case ',', ']', '}', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// member is one key of an object and where its canonical value sits in out.
type member struct {
	key        []byte
	start, end int
}

func (c *canonicalizer) object() error {
	c.pos++ // {
	// Values are encoded to the end of out as they come, then the object
	// is rebuilt from them in key order.
	base, mbase := len(c.out), len(c.members)
	for {
		c.skipSpace()
		if c.pos >= len(c.in) {
			return errTruncated
		}
		if c.in[c.pos] == '}' {
			c.pos++
			break
		}
		if c.in[c.pos] == ',' {
			c.pos++
			continue
		}
		key, err := c.str()
		if err != nil {
			return err
		}
		c.skipSpace()
		if c.pos >= len(c.in) || c.in[c.pos] != ':' {
			return errors.New("audit: canonical: expected ':'")
		}
		c.pos++
		start := len(c.out)
		if err := c.value(); err != nil {
			return err
		}
		c.members = append(c.members, member{key: key, start: start - base, end: len(c.out) - base})
	}
	members := c.members[mbase:]
	// Stable, so that of equal keys the last stays last and is kept.
	slices.SortStableFunc(members, func(a, b member) int { return bytes.Compare(a.key, b.key) })
	c.scratch = append(c.scratch[:0], c.out[base:]...)
	c.out = append(c.out[:base], '{')
	first := true
	for i, m := range members {
		if i+1 < len(members) && bytes.Equal(members[i+1].key, m.key) {
			continue
		}
		if !first {
			c.out = append(c.out, ',')
		}
		first = false
		c.out = appendString(c.out, m.key)
		c.out = append(c.out, ':')
		c.out = append(c.out, c.scratch[m.start:m.end]...)
	}
	c.out = append(c.out, '}')
	c.members = c.members[:mbase]
	return nil
}

func (c *canonicalizer) array() error {
	c.pos++ // [
	c.out = append(c.out, '[')
	n := 0
	for {
		c.skipSpace()
		if c.pos >= len(c.in) {
			return errTruncated
		}
		switch c.in[c.pos] {
		case ']':
			c.pos++
			c.out = append(c.out, ']')
			return nil
		case ',':
			c.pos++
			continue
		}
		if n > 0 {
			c.out = append(c.out, ',')
		}
		if err := c.value(); err != nil {
			return err
		}
		n++
	}
}

// str reads a string literal and returns its decoded value: for a plain
// one (ASCII, no escapes), the literal's own bytes.
func (c *canonicalizer) str() ([]byte, error) {
	if c.pos >= len(c.in) || c.in[c.pos] != '"' {
		return nil, errors.New("audit: canonical: expected a string")
	}
	start := c.pos
	plain := true
	for c.pos++; c.pos < len(c.in); c.pos++ {
		switch b := c.in[c.pos]; {
		case b == '\\':
			plain = false
			c.pos++
		case b >= 0x80:
			plain = false
		case b == '"':
			c.pos++
			lit := c.in[start:c.pos]
			if plain {
				return lit[1 : len(lit)-1], nil
			}
			// Escapes and non-ASCII decode as encoding/json decodes them
			// (invalid UTF-8 and lone surrogates become U+FFFD).
			var s string
			if err := json.Unmarshal(lit, &s); err != nil {
				return nil, err
			}
			return []byte(s), nil
		}
	}
	return nil, errTruncated
}

// appendString appends s quoted as encoding/json quotes it.
func appendString(dst, s []byte) []byte {
	for _, b := range s {
		if b < 0x20 || b >= 0x80 || b == '"' || b == '\\' || b == '<' || b == '>' || b == '&' {
			q, _ := json.Marshal(string(s)) // a string always encodes
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
