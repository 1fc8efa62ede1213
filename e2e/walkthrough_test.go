package e2e

import (
	"encoding/json"
	"image/jpeg"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testenv"
)

// TestWalkthrough follows the README with the real binaries only:
// consent, arm, activate, ping, deactivate.
func TestWalkthrough_ConsentArmActivatePingDeactivate(t *testing.T) {
	env := testenv.NewEnv(t)
	srv := env.StartServer(t, []string{"REMOTE_SUPPORT_ENABLED=true", "REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.0/8", "ARGUS_OPS_TOKEN=" + opsToken})
	token := env.Operator(t, "admin", "operator:admin", "tenant:admin", "tenant:arm", "agent:admin", "remote_support")
	cfgDir := t.TempDir()
	var ctlErrs strings.Builder
	ctl := func(args ...string) string {
		t.Helper()
		cmdEnv := []string{"ARGUSCTL_SERVER=" + srv.APIURL, "ARGUSCTL_TOKEN=" + token, "ARGUSCTL_OPS_TOKEN=" + opsToken,
			"ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + cfgDir}
		out, stderr, err := testenv.Run(t, cmdEnv, "argusctl", args...)
		ctlErrs.WriteString(stderr)
		require.NoError(t, err, "argusctl %v\n%s", args, stderr)
		return out
	}

	ctl("tenant", "create", "acme")
	enr := ctl("agent", "enroll", "--tenant", "acme", "--name", "cam-gw-1")
	state := filepath.Join(t.TempDir(), "agent-state")
	out, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", srv.APIURL, "--token", enr, "--state-dir", state)
	require.NoError(t, err, stderr)
	agentID := strings.Fields(strings.TrimPrefix(out, "enrolled as agent "))[0]
	h := newHostFixture(t)
	agentProc := testenv.StartAgent(t, state, "ARGUS_AGENT_CONFIG="+h.config)
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(ctl("agent", "list", "--tenant", "acme"), "yes") }, "agent online")

	ctl("tenant", "consent", "record", "acme", "--document-id", "DOC-2026-0042", "--signed-by", "Jane Roe, CISO", "--signed-at", "2026-11-20")
	ctl("tenant", "arm", "acme", "--reason", "INC-2231: stream drops at site 4")
	assert.Contains(t, ctl("tenant", "show", "acme"), "DOC-2026-0042")

	var sess apiclient.Session
	require.NoError(t, json.Unmarshal([]byte(ctl("support", "activate", "--tenant", "acme", "--agent", agentID, "--reason", "INC-2231", "--ttl", "15m", "-o", "json")), &sess))
	assert.True(t, sess.Active)
	kept := filepath.Join(cfgDir, "argusctl", "sessions", sess.ID+".token")
	fi, err := os.Stat(kept)
	require.NoError(t, err, "the session token is kept for the operator")
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	walkSessionCommands(t, ctl, sess.ID, agentID, h)
	assert.Contains(t, ctl("agent", "show", agentID), "capabilities (advisory")

	sessionToken, err := os.ReadFile(kept)
	require.NoError(t, err)
	assert.Contains(t, ctl("support", "deactivate", sess.ID), "deactivated")
	_, err = os.Stat(kept)
	assert.ErrorIs(t, err, os.ErrNotExist, "the kept token is removed with the session")
	assert.NotContains(t, ctl("support", "list", "--active"), sess.ID)

	// No secret this run minted or used appears in any log of it.
	st, err := os.ReadFile(filepath.Join(state, "enrollment.json"))
	require.NoError(t, err)
	var enrolled struct {
		Secret string `json:"secret"`
	}
	require.NoError(t, json.Unmarshal(st, &enrolled))
	logs := srv.Logs() + "\n" + agentProc.Logs() + "\n" + ctlErrs.String()
	require.Contains(t, logs, "api request", "the logs were captured")
	for name, secret := range map[string]string{
		"operator token":        token,
		"operator token secret": token[len(token)-64:],
		"enrollment token":      enr,
		"enrollment secret":     enr[len(enr)-64:],
		"agent secret":          enrolled.Secret,
		"session token":         strings.TrimSpace(string(sessionToken)),
		"session secret":        strings.TrimSpace(string(sessionToken))[len(strings.TrimSpace(string(sessionToken)))-64:],
		"ops token":             opsToken,
	} {
		require.NotEmpty(t, secret, name)
		assert.NotContains(t, logs, secret, "%s must never be logged", name)
	}
	assert.Regexp(t, `"trace_id":"[0-9a-f]{32}"`, srv.Logs(), "request log lines carry their trace id")
}

// walkSessionCommands runs the README's commands in a live session
// through ctl (argusctl) and checks what each gives: ping, info, the
// session listed, tail-log, read-file, a camera frame and capabilities.
func walkSessionCommands(t *testing.T, ctl func(args ...string) string, sessionID, agentID string, h hostFixture) {
	t.Helper()
	assert.Contains(t, ctl("support", "ping", "--session", sessionID), "pong")
	assert.Contains(t, ctl("support", "info", "--session", sessionID), agentID)
	assert.Contains(t, ctl("support", "list", "--active"), sessionID)
	// The commands operators come for, through argusctl.
	assert.Equal(t, "last line", ctl("support", "tail-log", "--session", sessionID, "--log", "streamer", "--lines", "1"))
	copyPath := filepath.Join(t.TempDir(), "config.yaml")
	ctl("support", "read-file", "--session", sessionID, filepath.Join(h.root, "config.yaml"), "--out", copyPath)
	got, err := os.ReadFile(copyPath)
	require.NoError(t, err)
	assert.Equal(t, h.configBody, got)
	framePath := filepath.Join(t.TempDir(), "frame.jpg")
	ctl("support", "camera", "--session", sessionID, "--camera", "test", "--out", framePath)
	frame, err := os.Open(framePath)
	require.NoError(t, err)
	img, err := jpeg.Decode(frame)
	frame.Close()
	require.NoError(t, err)
	assert.Equal(t, 320, img.Bounds().Dx())
	assert.Contains(t, ctl("support", "capabilities", "--session", sessionID), `"kernel"`)
}
