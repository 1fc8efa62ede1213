package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/input"
)

// maxBodyBytes bounds every request body the API reads.
const maxBodyBytes = 1 << 20

// decodeJSON reads a bounded JSON body into v, refusing unknown fields: a
// misspelt field is an error, never silently ignored.
//
// Its text must be valid UTF-8 with no NUL (invalid_text): Go's decoder
// would turn the one into U+FFFD silently and keep the other, which
// PostgreSQL then refuses.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return apierror.New(http.StatusRequestEntityTooLarge, apierror.CodePayloadTooLarge, "request body over 1 MiB")
		}
		return apierror.New(http.StatusBadRequest, apierror.CodeBadRequest, "reading the body: "+err.Error())
	}
	if err := input.JSON("body", body); err != nil {
		return apierror.New(http.StatusBadRequest, apierror.CodeInvalidText, err.Message)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apierror.New(http.StatusBadRequest, apierror.CodeBadRequest, "invalid JSON body: "+err.Error())
	}
	return nil
}

// clientIP is the TCP peer address of the request.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// actor starts the audit entry of an action taken by the request's operator.
func actor(r *http.Request) audit.Entry {
	p := principalFrom(r.Context())
	return audit.Entry{Actor: "operator:" + p.OperatorName, OperatorID: p.OperatorID, ClientIP: clientIP(r)}
}

func badRequest(msg string) *apierror.Error {
	return apierror.New(http.StatusBadRequest, apierror.CodeBadRequest, msg)
}

// limiter allows each key a number of events per window: enough for
// people and scripts, too few for guessing.
type limiter struct {
	mu     sync.Mutex
	per    int
	window time.Duration
	counts map[string]*bucket
}

type bucket struct {
	start time.Time
	n     int
}

func newLimiter(per int, window time.Duration) *limiter {
	return &limiter{per: per, window: window, counts: map[string]*bucket{}}
}

func (l *limiter) allow(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.counts) > 10000 {
		for k, b := range l.counts {
			if now.Sub(b.start) > l.window {
				delete(l.counts, k)
			}
		}
	}
	b := l.counts[key]
	if b == nil || now.Sub(b.start) > l.window {
		b = &bucket{start: now}
		l.counts[key] = b
	}
	b.n++
	return b.n <= l.per
}
