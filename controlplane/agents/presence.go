package agents

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Connected records that node holds the agent's connection now.
func (s *Store) Connected(ctx context.Context, id, node, remote string, at time.Time) error {
	_, err := s.pool.Exec(ctx, `
		WITH p AS (
			INSERT INTO agent_presence (agent_id, node_id, connected_at, remote_addr) VALUES ($1, $2, $3, $4)
			ON CONFLICT (agent_id) DO UPDATE SET node_id = $2, connected_at = $3, remote_addr = $4
		)
		UPDATE agents SET last_seen_at = $3 WHERE id = $1`, id, node, at, remote)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	return nil
}

// Disconnected records that the agent's connection on node ended. A newer
// connection on another node (or a newer one here) is left alone.
func (s *Store) Disconnected(ctx context.Context, id, node string, connectedAt, at time.Time) error {
	_, err := s.pool.Exec(ctx, `
		WITH d AS (
			DELETE FROM agent_presence WHERE agent_id = $1 AND node_id = $2 AND connected_at = $3
		)
		UPDATE agents SET last_seen_at = $4 WHERE id = $1`, id, node, connectedAt, at)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	return nil
}

// ClearNode forgets every connection node held: at start-up, after a
// crash, none of them survives.
func (s *Store) ClearNode(ctx context.Context, node string) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM agent_presence WHERE node_id = $1", node)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	return nil
}

// Seen records heartbeats: the time each agent was last heard from and the
// version it reports.
func (s *Store) Seen(ctx context.Context, seen map[string]Heartbeat) error {
	if len(seen) == 0 {
		return nil
	}
	ids := make([]string, 0, len(seen))
	times := make([]time.Time, 0, len(seen))
	versions := make([]string, 0, len(seen))
	for id, h := range seen {
		ids = append(ids, id)
		times = append(times, h.At)
		versions = append(versions, h.Version)
	}
	_, err := s.pool.Exec(ctx, `
		UPDATE agents a SET last_seen_at = GREATEST(a.last_seen_at, u.at), version = NULLIF(u.version, '')
		FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, at, version)
		WHERE a.id = u.id`, ids, times, versions)
	if err != nil {
		return fmt.Errorf("heartbeats: %w", err)
	}
	return nil
}

// Heartbeat is what one heartbeat tells the store.
type Heartbeat struct {
	At      time.Time
	Version string
}

// SetManifest stores the agent's latest advisory manifest.
func (s *Store) SetManifest(ctx context.Context, id string, manifest json.RawMessage, version string) error {
	_, err := s.pool.Exec(ctx, `UPDATE agents SET manifest = $2, manifest_at = now(), version = NULLIF($3, ''), last_seen_at = now()
		WHERE id = $1`, id, manifest, version)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}
