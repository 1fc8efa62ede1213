package reconcile

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSameNumber_ByValueNotSpelling(t *testing.T) {
	for _, p := range [][2]string{
		{"1e-7", "0.0000001"}, {"-0", "0"}, {"-0.0", "0"}, {"0e5", "0.000"}, {"1.50", "1.5"}, {"1E+2", "100"}, {"0.001e3", "1"},
		{"1e21", "1000000000000000000000"}, {"12345678901234567890", "1.234567890123456789e19"}, {"-2.5e-3", "-0.0025"},
		{"1e999999999", "1e999999999"},
	} {
		assert.True(t, sameNumber(p[0], p[1]), "%s = %s", p[0], p[1])
		assert.True(t, sameNumber(p[1], p[0]), "%s = %s", p[1], p[0])
	}
	for _, p := range [][2]string{
		{"1", "-1"}, {"1e-7", "1e-8"}, {"12345678901234567890", "12345678901234567891"}, {"0.1", "0.10000000000000001"},
		{"1e400", "1e401"}, {"10", "1"}, {"1e2147483648", "1e2147483649"},
	} {
		assert.False(t, sameNumber(p[0], p[1]), "%s != %s", p[0], p[1])
	}
}

func TestSameJSON_ComparesByMeaning(t *testing.T) {
	assert.True(t, sameJSON([]byte(`{"b":[1e-7,{"x":"\u003c"}],"a":-0}`), []byte(`{"a": 0, "b": [0.0000001, {"x": "<"}]}`)))
	assert.False(t, sameJSON([]byte(`{"a":1}`), []byte(`{"a":1,"b":null}`)))
	assert.False(t, sameJSON([]byte(`{"a":"1"}`), []byte(`{"a":1}`)))
	assert.False(t, sameJSON([]byte(`[1,2]`), []byte(`[2,1]`)))
	assert.False(t, sameJSON([]byte(`{"a":1}`), []byte(`{"a":1`)))
}
