// Package apiclient is argusctl's client for the control-plane HTTP API.
// It speaks JSON, sends the operator token (and the ops token where the
// 3-factor gate wants it), and turns error documents into *Error.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

// maxResponseBytes bounds what the client reads from one response.
const maxResponseBytes = 64 << 20

// Client calls the API.
type Client struct {
	BaseURL  string
	Token    string
	OpsToken string
	// SessionToken, when set, is sent as X-Argus-Session-Token.
	SessionToken string
	HTTP         *http.Client
}

// Error is an error document from the API.
type Error struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	// CommandID is the command an error is about (completion_not_recorded).
	CommandID string `json:"command_id,omitempty"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// IsCode reports whether err is an API error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Do sends a request with body (JSON, may be nil) and decodes a JSON
// response into out (may be nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	if body == nil {
		return c.do(ctx, method, path, "", nil, out)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return c.do(ctx, method, path, "application/json", b, out)
}

// DoRaw sends body as is, with the given content type.
func (c *Client) DoRaw(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	return c.do(ctx, method, path, contentType, body, out)
}

func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	// One command is one trace: the server continues this context.
	otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if c.OpsToken != "" {
		req.Header.Set("X-Argus-Ops-Token", c.OpsToken)
	}
	if c.SessionToken != "" {
		req.Header.Set("X-Argus-Session-Token", c.SessionToken)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 2 * time.Minute}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the ARGUS server at %s: %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		var doc struct {
			Error *Error `json:"error"`
		}
		if json.Unmarshal(data, &doc) == nil && doc.Error != nil {
			doc.Error.Status = resp.StatusCode
			return doc.Error
		}
		return &Error{Status: resp.StatusCode, Code: "http_error", Message: strings.TrimSpace(string(data))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode response from %s: %w", path, err)
	}
	return nil
}
