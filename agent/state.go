package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/argus-remote/argus/topics"
)

// stateFile holds the enrollment in the state directory (0600).
const stateFile = "enrollment.json"

// State is what enrollment gave this agent. Secret is its broker password;
// SigningPublicKey is the control plane's key, pinned here at enrollment.
type State struct {
	AgentID          string    `json:"agent_id"`
	Secret           string    `json:"secret"`
	TenantID         string    `json:"tenant_id"`
	Tenant           string    `json:"tenant"`
	AgentName        string    `json:"agent_name"`
	BrokerURL        string    `json:"broker_url"`
	ServerURL        string    `json:"server_url"`
	SigningPublicKey string    `json:"signing_public_key"`
	EnrolledAt       time.Time `json:"enrolled_at"`
}

// ErrNotEnrolled means the state directory holds no enrollment.
var ErrNotEnrolled = errors.New("not enrolled: run 'argus-agent enroll --server URL --token TOKEN' first")

// LoadState reads the enrollment from dir.
func LoadState(dir string) (State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, ErrNotEnrolled
	}
	if err != nil {
		return State{}, fmt.Errorf("state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if _, err := topics.ParseAgentID(s.AgentID); err != nil {
		return State{}, fmt.Errorf("state: agent id %q: %w", s.AgentID, err)
	}
	if _, err := topics.ParsePublicKey(s.SigningPublicKey); err != nil {
		return State{}, fmt.Errorf("state: %w", err)
	}
	return s, nil
}

func saveState(dir string, s State) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	// Written aside and renamed, so a crash never leaves half a file.
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

// enrollError is an API error from enrollment, with its stable code.
type enrollError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *enrollError) Error() string { return e.Message + " (" + e.Code + ")" }

// Enroll exchanges a one-time token at the control plane for this agent's
// identity and stores it in dir. It refuses to replace an existing
// enrollment.
func Enroll(ctx context.Context, serverURL, token, dir string, hc *http.Client) (State, error) {
	if _, err := LoadState(dir); err == nil {
		return State{}, fmt.Errorf("%s already holds an enrollment; remove %s to enroll again", dir, stateFile)
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	body, _ := json.Marshal(map[string]string{"token": token})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(serverURL, "/")+"/v1/enroll", bytes.NewReader(body))
	if err != nil {
		return State{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return State{}, fmt.Errorf("enroll: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return State{}, fmt.Errorf("enroll: %w", err)
	}
	if resp.StatusCode != http.StatusCreated {
		var doc struct {
			Error *enrollError `json:"error"`
		}
		if json.Unmarshal(data, &doc) == nil && doc.Error != nil {
			return State{}, doc.Error
		}
		return State{}, fmt.Errorf("enroll: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return State{}, fmt.Errorf("enroll: %w", err)
	}
	s.ServerURL = serverURL
	s.EnrolledAt = time.Now().UTC()
	if _, err := topics.ParseAgentID(s.AgentID); err != nil || s.Secret == "" || s.BrokerURL == "" {
		return State{}, errors.New("enroll: incomplete answer from the server")
	}
	if _, err := topics.ParsePublicKey(s.SigningPublicKey); err != nil {
		return State{}, fmt.Errorf("enroll: %w", err)
	}
	if err := saveState(dir, s); err != nil {
		return State{}, err
	}
	return s, nil
}
