package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// An audited action must be recorded whatever it was given: the denial of
// a request with %00 in its path is exactly the one to keep. PostgreSQL
// refuses some strings, though: text columns refuse NUL and invalid UTF-8,
// jsonb refuses \u0000, lone UTF-16 surrogates, numbers beyond numeric's
// range and nesting past its stack. So, before either row is encoded,
// every string of an Entry (each field, and each key and each string
// anywhere in Detail) is spelled one fixed way:
//
//   - each byte that is not part of valid UTF-8 becomes U+FFFD '�', one per
//     byte, as encoding/json has always spelled it in the event payload;
//   - NUL becomes U+2400 '␀' (SYMBOL FOR NULL), Unicode's own picture of
//     it: one visible character that JSON and SQL pass through as it is.
//     The two characters `\0` would be taken for a literal backslash-zero
//     (common in paths and patterns) and be written "\\0" in JSON. Like
//     U+FFFD, it reads the same as the character itself sent literally:
//     the price of a spelling that needs no escaping of its own;
//   - a lone surrogate in raw JSON (json.RawMessage, or what a value's
//     MarshalJSON returns) becomes U+FFFD, as encoding/json decodes it.
//
// And, where the database would refuse the size rather than the bytes:
//
//   - an Entry field over 64 KiB is cut at a character boundary and ends
//     with "…[truncated N bytes]";
//   - in Detail, a number numeric cannot hold (a json.Number or raw JSON
//     such as 1e999999, or not a number at all) is kept as a string of its
//     spelling, as is a float JSON cannot spell (NaN, ±Inf); a value JSON
//     cannot encode becomes "(unencodable <type>)"; a value nested deeper
//     than 512 levels becomes "(nested too deep)";
//   - a Detail whose JSON is over 1 MiB is replaced by its size and SHA-256
//     (omitted_bytes, omitted_sha256).
//
// The one cleaned Entry feeds both rows, so audit_log and events say the
// same, and the event keeps the very bytes its hash covers. A string
// that is already storable is used as it is; checking it is one pass over
// its bytes, and nothing is copied unless something must change.
const (
	maxFieldBytes  = 64 << 10
	maxDetailBytes = 1 << 20
	maxDepth       = 512

	nulSymbol = "\u2400"
	badByte   = "\ufffd"
)

// storable returns e with every string storable.
func storable(e Entry) Entry {
	e.Actor = cleanField(e.Actor)
	e.OperatorID = cleanField(e.OperatorID)
	e.Action = cleanField(e.Action)
	e.Outcome = cleanField(e.Outcome)
	e.TenantID = cleanField(e.TenantID)
	e.AgentID = cleanField(e.AgentID)
	e.SessionID = cleanField(e.SessionID)
	e.ClientIP = cleanField(e.ClientIP)
	e.Reason = cleanField(e.Reason)
	if d, changed := cleanMap(e.Detail, 0); changed {
		e.Detail = d
	}
	return e
}

// plain reports whether s is ASCII without NUL: storable as it is. It
// looks at eight bytes at a time: every audited string passes here.
func plain(s string) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := s[i : i+8]
		x := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
			uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
		// A byte with its high bit set, or (of bytes without it) a zero one.
		if x&highs != 0 || (x-ones)&^x&highs != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if b := s[i]; b == 0 || b >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// cleanField cleans one of an Entry's own fields and bounds its size.
func cleanField(s string) string {
	s, _ = cleanString(s)
	if len(s) <= maxFieldBytes {
		return s
	}
	cut := maxFieldBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("…[truncated %d bytes]", len(s)-cut)
}

// cleanString returns s spelled storably and whether that changed it.
func cleanString(s string) (string, bool) {
	if plain(s) || (utf8.ValidString(s) && strings.IndexByte(s, 0) < 0) {
		return s, false
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteString(badByte)
		case r == 0:
			b.WriteString(nulSymbol)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String(), true
}

// cleanMap returns m cleaned, and whether anything changed; m itself is
// never modified (the caller's map may be shared). Keys that clean to the
// same spelling keep one value: that of the key already storable, else of
// the first original key in byte order.
func cleanMap(m map[string]any, depth int) (map[string]any, bool) {
	var (
		out     map[string]any
		renamed []keyed
	)
	for k, v := range m {
		ck, kc := cleanString(k)
		cv, vc := cleanValue(v, depth+1)
		if !kc && !vc {
			continue
		}
		if out == nil {
			out = make(map[string]any, len(m))
			for k, v := range m {
				out[k] = v
			}
		}
		if kc {
			delete(out, k)
			renamed = append(renamed, keyed{orig: k, key: ck, v: cv})
		} else {
			out[k] = cv
		}
	}
	if out == nil {
		return m, false
	}
	slices.SortFunc(renamed, func(a, b keyed) int { return strings.Compare(a.orig, b.orig) })
	for _, r := range renamed {
		if _, taken := out[r.key]; !taken {
			out[r.key] = r.v
		}
	}
	return out, true
}

type keyed struct {
	orig, key string
	v         any
}

// cleanValue returns v cleaned, and whether anything changed.
func cleanValue(v any, depth int) (any, bool) {
	if depth > maxDepth {
		return "(nested too deep)", true
	}
	switch x := v.(type) {
	case nil, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return v, false
	case string:
		if c, changed := cleanString(x); changed {
			return c, true
		}
		return v, false // v, not x: no new interface value
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return strconv.FormatFloat(x, 'g', -1, 64), true
		}
		return v, false
	case float32:
		if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
			return strconv.FormatFloat(f, 'g', -1, 32), true
		}
		return v, false
	case time.Time:
		if y := x.Year(); y < 0 || y > 9999 { // MarshalJSON refuses these
			return x.String(), true
		}
		return v, false
	case map[string]any:
		if c, changed := cleanMap(x, depth); changed {
			return c, true
		}
		return v, false
	case []any:
		if c, changed := cleanSlice(x, func(e any) (any, bool) { return cleanValue(e, depth+1) }); changed {
			return c, true
		}
		return v, false
	case []string:
		if c, changed := cleanSlice(x, cleanString); changed {
			return c, true
		}
		return v, false
	case map[string]string:
		clean := true
		for k, e := range x {
			if _, changed := cleanString(k); changed {
				clean = false
			} else if _, changed := cleanString(e); changed {
				clean = false
			}
		}
		if clean {
			return v, false
		}
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = e
		}
		c, _ := cleanMap(m, depth)
		return c, true
	case json.Number:
		if storableNumber(string(x)) {
			return v, false
		}
		s, _ := cleanString(string(x))
		return s, true
	case json.RawMessage:
		if !json.Valid(x) {
			s, _ := cleanString(string(x))
			return s, true
		}
		if c, changed := cleanRaw(x, depth); changed {
			return c, true
		}
		return v, false
	default:
		// Anything else is what its JSON says, cleaned the same way.
		raw, err := json.Marshal(x)
		if err != nil {
			return fmt.Sprintf("(unencodable %T)", x), true
		}
		if c, changed := cleanRaw(raw, depth); changed {
			return c, true
		}
		return v, false
	}
}

// cleanSlice returns x with each element cleaned, and whether any
// changed; x is copied only then.
func cleanSlice[T any](x []T, clean func(T) (T, bool)) ([]T, bool) {
	var out []T
	for i, e := range x {
		ce, changed := clean(e)
		if changed && out == nil {
			out = slices.Clone(x)
		}
		if out != nil {
			out[i] = ce
		}
	}
	return out, out != nil
}

// cleanRaw cleans valid JSON. JSON that is already storable is kept as
// it is (unchanged); other JSON is decoded, with its numbers as written,
// and cleaned as a value: decoding spells lone surrogates and invalid
// bytes U+FFFD, and \u0000 becomes a NUL that cleaning spells U+2400.
func cleanRaw(raw []byte, depth int) (any, bool) {
	if rawStorable(raw, maxDepth-depth) {
		return nil, false
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil { // nested past the decoder's limit
		s, _ := cleanString(string(raw))
		return s, true
	}
	c, _ := cleanValue(v, depth)
	return c, true
}

// rawStorable reports, in one pass, whether valid JSON raw is storable as
// it is: valid UTF-8, no \u0000 or surrogate escape, every number within
// numeric's range, nested at most limit deep.
func rawStorable(raw []byte, limit int) bool {
	if !utf8.Valid(raw) {
		return false
	}
	depth := 0
	for i := 0; i < len(raw); i++ {
		switch b := raw[i]; {
		case b == '"':
			for i++; i < len(raw) && raw[i] != '"'; i++ {
				if raw[i] != '\\' {
					continue
				}
				if i++; i+4 < len(raw) && raw[i] == 'u' {
					if h := raw[i+1 : i+5]; string(h) == "0000" || h[0]|0x20 == 'd' {
						return false
					}
				}
			}
		case b == '[' || b == '{':
			if depth++; depth > limit {
				return false
			}
		case b == ']' || b == '}':
			depth--
		case b == '-' || (b >= '0' && b <= '9'):
			j := i
			for j < len(raw) && isNumberByte(raw[j]) {
				j++
			}
			if !storableNumber(string(raw[i:j])) {
				return false
			}
			i = j - 1
		}
	}
	return true
}

func isNumberByte(b byte) bool {
	return (b >= '0' && b <= '9') || b == '.' || b == 'e' || b == 'E' || b == '+' || b == '-'
}

// storableNumber reports whether s is a JSON number that PostgreSQL's
// numeric, which jsonb uses, can hold: at most 131,072 digits before the
// decimal point and 16,383 after it (as written: 100e-16385 has 16,385).
// An exponent past 2^24 is refused whatever the digits.
func storableNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	intStart := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	intDigits := i - intStart
	if intDigits == 0 || (intDigits > 1 && s[intStart] == '0') {
		return false
	}
	fracDigits, leadingZeros := 0, 0
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		for i < len(s) && s[i] == '0' {
			i++
		}
		leadingZeros = i - start
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if fracDigits = i - start; fracDigits == 0 {
			return false
		}
	}
	exp := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		neg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			neg = s[i] == '-'
			i++
		}
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			if exp = exp*10 + int(s[i]-'0'); exp > 1<<24 {
				return false
			}
			i++
		}
		if i == start {
			return false
		}
		if neg {
			exp = -exp
		}
	}
	if i != len(s) {
		return false
	}
	// Digits after the point as written, and before it once the value's
	// leading zeros are gone (a zero has none).
	before := intDigits + exp
	if s[intStart] == '0' {
		before = exp - leadingZeros
		if leadingZeros == fracDigits {
			before = 0
		}
	}
	return fracDigits-exp <= 16383 && before <= 131072
}

// boundDetail replaces a detail whose JSON is over the bound by its size
// and digest.
func boundDetail(encoded []byte) map[string]any {
	sum := sha256.Sum256(encoded)
	return map[string]any{"omitted": "detail over 1 MiB", "omitted_bytes": len(encoded), "omitted_sha256": hex.EncodeToString(sum[:])}
}
