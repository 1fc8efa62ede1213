package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/testenv"
)

// browser starts headless Chromium (Debian's package), as the machine's
// closed network needs it: no background networking, no sandbox as root.
// Without Chromium the test is skipped (failed under ARGUS_REQUIRE_ALL=1).
func browser(t *testing.T) context.Context {
	t.Helper()
	exec := testenv.NeedTool(t, "chromium", "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exec),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	return ctx
}

// waitState waits until the page's indicator reads want.
func waitState(t *testing.T, ctx context.Context, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("state").textContent === "`+want+`"`, chromedp.WithPollingInterval(20*time.Millisecond)))
	if err != nil {
		t.Fatalf("the page did not show %q within %v: %v", want, within, err)
	}
	return time.Since(start)
}

func TestStatusPage_TurnsActiveAndBackLiveInChromium(t *testing.T) {
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1")
	var viewer struct {
		Token string `json:"token"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{"description": "browser test"}, &viewer))

	ctx := browser(t)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(s.srv.APIURL()+"/status/#token="+viewer.Token)))
	waitState(t, ctx, "idle", 15*time.Second)
	url, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	assert.NotContains(t, url, viewer.Token, "the token is cleared from the address bar")

	sess, _ := s.activate(t, agentID, "")
	took := waitState(t, ctx, "ACTIVE", 5*time.Second)
	assert.Less(t, took, 2*time.Second, "the page turns ACTIVE within about a second, with no reload")
	live, err := chromedp.Run(ctx, chromedp.Text("#live tbody"))
	require.NoError(t, err)
	tenant, err := chromedp.Run(ctx, chromedp.Text("#tenant"))
	require.NoError(t, err)
	assert.Contains(t, live, "cam-gw-1")
	assert.Contains(t, live, "alice")
	assert.Equal(t, "acme", tenant)

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NotEmpty(t, shot)
	out := filepath.Join(t.TempDir(), "status-active.png")
	if dir := os.Getenv("ARGUS_TEST_ARTIFACTS"); dir != "" {
		out = filepath.Join(dir, "status-active.png")
	}
	require.NoError(t, os.WriteFile(out, shot, 0o644))
	t.Logf("screenshot: %s", out)

	require.NoError(t, s.do(t, "POST", "/v1/support/sessions/"+sess.ID+"/deactivate", nil, nil))
	waitState(t, ctx, "idle", 5*time.Second)
	today, err := chromedp.Run(ctx, chromedp.Text("#today tbody"))
	require.NoError(t, err)
	assert.True(t, strings.Contains(today, "deactivated"), "today's history lists the ended session: %q", today)
}
