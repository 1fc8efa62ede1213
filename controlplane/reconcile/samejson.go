package reconcile

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// jsonb keeps a number by its value and spells it its own way, so what
// audit_log.detail, events.payload and events.canonical hold is compared
// by meaning: the same keys, the same strings, and numbers of the same
// value however they are spelled (1e-7 and 0.0000001, -0 and 0, 1.50 and
// 1.5), without ever expanding an exponent.

// decode reads JSON with its numbers as written.
func decode(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// sameJSON reports whether two JSON texts say the same.
func sameJSON(a, b []byte) bool {
	x, err := decode(a)
	if err != nil {
		return false
	}
	y, err := decode(b)
	return err == nil && equalJSON(x, y)
}

// equalJSON compares values decoded with json.Number.
func equalJSON(x, y any) bool {
	switch x := x.(type) {
	case map[string]any:
		y, ok := y.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !equalJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := y.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	case json.Number:
		y, ok := y.(json.Number)
		return ok && sameNumber(string(x), string(y))
	default: // string, bool, nil
		return x == y
	}
}

// sameNumber reports whether two JSON numbers have the same value.
func sameNumber(a, b string) bool {
	if a == b {
		return true
	}
	x, okx := parseDecimal(a)
	y, oky := parseDecimal(b)
	return okx && oky && x == y
}

// decimal is a number's value as 0.digits × 10^point, digits without
// leading or trailing zeros (none for zero, which has no sign).
type decimal struct {
	neg    bool
	digits string
	point  int64
}

func parseDecimal(s string) (decimal, bool) {
	var d decimal
	if strings.HasPrefix(s, "-") {
		d.neg, s = true, s[1:]
	}
	mant, exp := s, int64(0)
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		var err error
		if exp, err = strconv.ParseInt(strings.TrimPrefix(s[i+1:], "+"), 10, 32); err != nil {
			return d, false
		}
		mant = s[:i]
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := intPart + frac
	point := int64(len(intPart)) + exp
	trimmed := strings.TrimLeft(digits, "0")
	point -= int64(len(digits) - len(trimmed))
	d.digits = strings.TrimRight(trimmed, "0")
	if d.digits == "" {
		return decimal{}, true
	}
	d.point = point
	return d, true
}
