package auditstream

import "time"

// Format is format for the tests, with an event made of its parts.
func Format(seq int64, hash []byte, at time.Time, canonical []byte, hostname string, max int) ([]byte, error) {
	return format(event{Seq: seq, Hash: hash, OccurredAt: at, Canonical: canonical}, hostname, 4242, max)
}
