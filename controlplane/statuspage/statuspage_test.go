package statuspage_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/statuspage"
)

func TestCSP_AdmitsOnlyThisServerAndItsBroker(t *testing.T) {
	assert.Equal(t, "default-src 'self'; connect-src 'self' wss://mqtt.example:8443; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
		statuspage.CSP("wss://mqtt.example:8443/mqtt"))
	for _, bad := range []string{"", "http://x/", "ws://", "javascript:alert(1)", "ws://a b/"} {
		assert.NotContains(t, statuspage.CSP(bad), "connect-src 'self' ", "%q adds no source", bad)
	}
}

// The page and its assets load nothing from elsewhere: every src and href
// is a file of its own, and its HTML is readable on a phone.
func TestPage_SelfContained(t *testing.T) {
	srv := httptest.NewServer(statuspage.Handler("/status/", "ws://127.0.0.1:1/mqtt"))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/status/")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, statuspage.CSP("ws://127.0.0.1:1/mqtt"), resp.Header.Get("Content-Security-Policy"))
	html := string(body)
	assert.Contains(t, html, `<meta name="viewport" content="width=device-width, initial-scale=1">`)
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(html, -1) {
		assert.False(t, strings.Contains(m[1], "//") || strings.HasPrefix(m[1], "/"), "%s is fetched from this page's own folder", m[1])
		r, err := http.Get(srv.URL + "/status/" + m[1])
		require.NoError(t, err)
		r.Body.Close()
		assert.Equal(t, http.StatusOK, r.StatusCode, m[1])
	}
	for _, asset := range []string{"app.js", "style.css"} {
		r, err := http.Get(srv.URL + "/status/" + asset)
		require.NoError(t, err)
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		assert.NotRegexp(t, `https?://`, string(b), "%s names no other site", asset)
	}
}
