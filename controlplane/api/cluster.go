package api

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/argus-remote/argus/controlplane/apierror"
	"github.com/argus-remote/argus/controlplane/audit"
	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/controlplane/operators"
)

// clusterScopes may read the cluster's state: a monitor sees it on the
// status topics anyway, an operator admin runs the nodes.
var clusterScopes = []operators.Scope{operators.ScopeMonitor, operators.ScopeOperatorAdmin}

// ClusterStatus is GET /v1/cluster's answer.
type ClusterStatus struct {
	// Node is the node that answered.
	Node  string         `json:"node"`
	Nodes []cluster.Node `json:"nodes"`
}

// clusterStatus lists the cluster's nodes: lease age, version, agents
// held, fenced or not, reachable over NATS from the node asked. Every
// refusal, unauthenticated ones included, is audited (bounded per source).
func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.refuseCluster(w, r, audit.Entry{Actor: "anonymous", ClientIP: clientIP(r)},
			apierror.New(http.StatusUnauthorized, apierror.CodeUnauthenticated, "missing Authorization: Bearer token"))
		return
	}
	p, err := s.Operators.Authenticate(r.Context(), strings.TrimSpace(tok))
	if err != nil {
		if !isAuthRefusal(err) {
			s.Log.Error("authenticate", "err", err)
			apierror.Write(w, authError(err))
			return
		}
		s.refuseCluster(w, r, audit.Entry{Actor: "anonymous", ClientIP: clientIP(r)}, authError(err))
		return
	}
	by := audit.Entry{Actor: "operator:" + p.OperatorName, OperatorID: p.OperatorID, ClientIP: clientIP(r)}
	if !slices.ContainsFunc(clusterScopes, p.Has) {
		s.refuseCluster(w, r, by, apierror.New(http.StatusForbidden, apierror.CodeForbidden, "token lacks the monitor or operator:admin scope"))
		return
	}
	if s.ClusterNodes == nil {
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "this server runs no cluster membership"))
		return
	}
	nodes, err := s.ClusterNodes(r.Context())
	if err != nil {
		s.Log.Error("cluster status", "err", err)
		apierror.Write(w, apierror.New(http.StatusServiceUnavailable, apierror.CodeUnavailable, "cannot read the cluster's nodes right now"))
		return
	}
	if nodes == nil {
		nodes = []cluster.Node{}
	}
	writeJSON(w, http.StatusOK, ClusterStatus{Node: s.Node, Nodes: nodes})
}

func (s *Server) refuseCluster(w http.ResponseWriter, r *http.Request, by audit.Entry, e *apierror.Error) {
	by.Action, by.Outcome = "cluster.status", audit.Denied
	by.Detail = map[string]any{"code": e.Code, "node": s.Node}
	if s.refusalAuditLimit.allow(clientIP(r)) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer cancel()
		if err := audit.Write(ctx, s.Pool, by); err != nil {
			s.Log.Error("audit cluster status refusal", "err", err)
		}
	} else {
		s.Log.Warn("cluster status refused (audit rate-limited)", "ip", clientIP(r), "code", e.Code)
	}
	apierror.Write(w, e)
}
