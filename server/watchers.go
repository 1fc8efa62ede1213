package server

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mochi-mqtt/server/v2/packets"
)

// viewerCheck is how often the tenant viewers' connections are checked
// against their tokens.
const viewerCheck = time.Second

// watchViewers ends every viewer connection whose tenant token is revoked
// or gone, however that happened: this node's API ends its own
// revocations' connections at once and the others hear of them by
// broadcast, but a lost broadcast (or SQL by hand) is found here, within
// a check. One query per check, for the tokens of the viewers connected
// here, whatever the number of agents.
func (s *Server) watchViewers(ctx context.Context) {
	t := time.NewTicker(viewerCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		grants := s.policy.Viewers()
		ids := make([]string, 0, len(grants))
		for id, g := range grants {
			if s.broker.Connected(id) {
				ids = append(ids, g.TokenID)
			}
		}
		if len(ids) == 0 {
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rows, err := s.db.Pool.Query(qctx, `SELECT id FROM tenant_viewer_tokens WHERE id = ANY($1) AND revoked_at IS NULL`, ids)
		var live []string
		if err == nil {
			live, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		cancel()
		if err != nil {
			// A read-only connection is kept through a database hiccup;
			// the next check asks again.
			s.log.Debug("viewer token check", "err", err)
			continue
		}
		ok := make(map[string]bool, len(live))
		for _, id := range live {
			ok[id] = true
		}
		for client, g := range grants {
			if !ok[g.TokenID] && s.broker.Disconnect(client, packets.ErrNotAuthorized) {
				s.log.Info("viewer disconnected: its tenant token is revoked", "client", client, "token_id", g.TokenID)
			}
		}
	}
}
