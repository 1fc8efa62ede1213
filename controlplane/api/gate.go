package api

import (
	"context"
	"crypto/subtle"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/operators"
)

// Gate configures the 3-factor operator gate in front of opening sessions
// and running commands.
type Gate struct {
	// Enabled is REMOTE_SUPPORT_ENABLED: off, every support endpoint refuses.
	Enabled bool
	// OperatorCIDRs are the networks operators may come from.
	OperatorCIDRs []netip.Prefix
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// OpsToken is the second factor, sent as X-Argus-Ops-Token.
	OpsToken string
}

func contains(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	return slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
}

// callerIP is the address the request comes from: the TCP peer, or, when
// the peer is a trusted proxy, the nearest X-Forwarded-For address that is
// not itself a trusted proxy.
func (g Gate) callerIP(r *http.Request) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	peer = peer.Unmap()
	if !contains(g.TrustedProxies, peer) {
		return peer, true
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return netip.Addr{}, false
		}
		if !contains(g.TrustedProxies, a.Unmap()) {
			return a.Unmap(), true
		}
	}
	return peer, true
}

func (s *Server) remoteSupportDisabled(w http.ResponseWriter) {
	apierror.Write(w, apierror.New(http.StatusForbidden, "remote_support_disabled", "remote support is disabled on this server (REMOTE_SUPPORT_ENABLED)"))
}

// gate admits a request only when all three factors hold: the caller's IP
// is inside the operator networks, the ops token matches (constant time),
// and the bearer token carries remote_support. Any missing factor gets the
// same 403; only the audit says which.
func (s *Server) gate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Gate.Enabled {
			s.remoteSupportDisabled(w)
			return
		}
		var failed []string
		ip, ok := s.Gate.callerIP(r)
		if !ok || !contains(s.Gate.OperatorCIDRs, ip) {
			failed = append(failed, "source_ip")
		}
		got := r.Header.Get("X-Argus-Ops-Token")
		if s.Gate.OpsToken == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.Gate.OpsToken)) != 1 {
			failed = append(failed, "ops_token")
		}
		var p operators.Principal
		tok, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !hasBearer {
			failed = append(failed, "operator_token")
		} else if pr, err := s.Operators.Authenticate(r.Context(), strings.TrimSpace(tok)); err != nil {
			if !isAuthRefusal(err) {
				s.fail(w, r, authError(err))
				return
			}
			failed = append(failed, "operator_token")
		} else if !pr.Has(operators.ScopeRemoteSupport) {
			p = pr
			failed = append(failed, "remote_support_scope")
		} else {
			p = pr
		}
		ipText := ""
		if ip.IsValid() {
			ipText = ip.String()
		}
		if len(failed) > 0 {
			s.auditGateDenial(r, p, ipText, failed)
			apierror.Write(w, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "forbidden"))
			return
		}
		ctx := context.WithValue(r.Context(), principalKey{}, p)
		ctx = context.WithValue(ctx, callerIPKey{}, ipText)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

type callerIPKey struct{}

// gateIP is the caller address the gate established.
func gateIP(r *http.Request) string {
	if ip, ok := r.Context().Value(callerIPKey{}).(string); ok {
		return ip
	}
	return clientIP(r)
}

func (s *Server) auditGateDenial(r *http.Request, p operators.Principal, ip string, failed []string) {
	// Bounded per source, so a flood of refused requests cannot flood the
	// audit tables; the count of those skipped is not lost from the logs.
	if !s.gateAuditLimit.allow(clientIP(r)) {
		s.Log.Warn("remote support gate refused (audit rate-limited)", "ip", ip, "failed", failed)
		return
	}
	actorName := "anonymous"
	if p.OperatorName != "" {
		actorName = "operator:" + p.OperatorName
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	err := audit.Write(ctx, s.Pool, audit.Entry{
		Actor: actorName, OperatorID: p.OperatorID, Action: "support.gate", Outcome: audit.Denied, ClientIP: ip,
		Detail: map[string]any{"failed_factors": failed, "method": r.Method, "path": r.URL.Path, "peer": clientIP(r)},
	})
	if err != nil {
		s.Log.Error("audit gate denial", "err", err)
	}
}

// supportAuth admits reads and ending sessions with the remote_support
// scope alone: ending a session is never harder than opening one.
func (s *Server) supportAuth(next http.HandlerFunc) http.Handler {
	return s.requireScope(operators.ScopeRemoteSupport, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Gate.Enabled {
			s.remoteSupportDisabled(w)
			return
		}
		next(w, r)
	}))
}
