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
)

//go:embed assets
var assets embed.FS

// Handler serves the page under prefix (e.g. "/status/").
func Handler(prefix string) http.Handler {
	sub, _ := fs.Sub(assets, "assets")
	files := http.StripPrefix(prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// The page runs only its own scripts, talks only to this server and
		// its broker, and is never framed.
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
