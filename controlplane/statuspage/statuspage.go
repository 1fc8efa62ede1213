// Package statuspage serves the tenant's live remote-support indicator:
// a small static page, embedded in the binary, that connects to the broker
// from the browser with a tenant viewer token and shows, live, whether a
// session is active on the tenant's hosts.
//
// The MQTT client is MQTT.js (MIT), vendored in assets/ with its licence:
// the page needs no network beyond this server.
package statuspage

import (
	"embed"
	"io/fs"
	"net/http"
	"net/url"
)

//go:embed assets
var assets embed.FS

// Handler serves the page under prefix (e.g. "/status/"). brokerURL is
// the broker's WebSocket URL as the browser reaches it: the only place,
// besides this server, the page may connect to.
func Handler(prefix, brokerURL string) http.Handler {
	sub, _ := fs.Sub(assets, "assets")
	files := http.StripPrefix(prefix, http.FileServerFS(sub))
	csp := CSP(brokerURL)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// The page runs only its own scripts, talks only to this server and
		// its broker, and is never framed.
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// CSP is the page's Content-Security-Policy: everything from this server
// alone, and WebSocket connections to the broker's origin alone.
func CSP(brokerURL string) string {
	connect := "'self'"
	if u, err := url.Parse(brokerURL); err == nil && (u.Scheme == "ws" || u.Scheme == "wss") && u.Host != "" {
		connect += " " + u.Scheme + "://" + u.Host
	}
	return "default-src 'self'; connect-src " + connect + "; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
}
