package agents

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Connected records that node holds the agent's connection now and
// returns the connection's epoch: one more than any connection of the
// agent before it, on any node.
func (s *Store) Connected(ctx context.Context, id, node, remote string, at time.Time) (int64, error) {
	epoch, _, _, err := s.ConnectedFrom(ctx, id, node, remote, at)
	return epoch, err
}

// ConnectedFrom is Connected that also returns the presence the new one
// replaced: where the agent was connected until now, if its row was still
// there (a node that died, or one that handed its agents over, leaves it
// for the next node to replace).
func (s *Store) ConnectedFrom(ctx context.Context, id, node, remote string, at time.Time) (epoch int64, prev Presence, hadPrev bool, err error) {
	// One statement, one round trip, as every connection of the fleet
	// takes it. Its parts share one snapshot, so old is the row before
	// the upsert; FOR UPDATE makes it the latest committed version of
	// that row should another connection of the agent write it meanwhile.
	var node0 *string
	var epoch0 *int64
	err = s.pool.QueryRow(ctx, `
		WITH e AS (
			UPDATE agents SET presence_epoch = presence_epoch + 1, last_seen_at = $3 WHERE id = $1
			RETURNING presence_epoch
		), old AS (
			SELECT node_id, epoch FROM agent_presence WHERE agent_id = $1 FOR UPDATE
		), p AS (
			INSERT INTO agent_presence (agent_id, node_id, connected_at, remote_addr, epoch)
			SELECT $1, $2, $3, $4, presence_epoch FROM e
			ON CONFLICT (agent_id) DO UPDATE SET node_id = EXCLUDED.node_id, connected_at = EXCLUDED.connected_at,
				remote_addr = EXCLUDED.remote_addr, epoch = EXCLUDED.epoch
		)
		SELECT e.presence_epoch, old.node_id, old.epoch FROM e LEFT JOIN old ON true`, id, node, at, remote).Scan(&epoch, &node0, &epoch0)
	if err != nil {
		return 0, Presence{}, false, fmt.Errorf("presence: %w", err)
	}
	if node0 != nil && epoch0 != nil {
		prev, hadPrev = Presence{NodeID: *node0, Epoch: *epoch0}, true
	}
	return epoch, prev, hadPrev, nil
}

// Reassertion is a connection a node still holds whose row is gone or
// older.
type Reassertion struct {
	AgentID     string
	Remote      string
	ConnectedAt time.Time
	Epoch       int64
}

// Reasserted records again connections node still holds whose rows are
// gone or older (another node cleared them while this node's lease was
// late, or a write after the connect failed), each under its own epoch,
// in one statement: epochs keep the order the connections were made in,
// so a newer connection of the agent, on any node, is left alone and an
// older one is replaced. It returns the agents recorded.
func (s *Store) Reasserted(ctx context.Context, node string, conns []Reassertion) (map[string]bool, error) {
	ids, remotes := make([]string, len(conns)), make([]string, len(conns))
	at, epochs := make([]time.Time, len(conns)), make([]int64, len(conns))
	for i, c := range conns {
		ids[i], remotes[i], at[i], epochs[i] = c.AgentID, c.Remote, c.ConnectedAt, c.Epoch
	}
	rows, err := s.pool.Query(ctx, `
		INSERT INTO agent_presence (agent_id, node_id, connected_at, remote_addr, epoch)
		SELECT a, $1, c, r, e FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::bigint[]) AS t(a, c, r, e)
		ON CONFLICT (agent_id) DO UPDATE SET node_id = EXCLUDED.node_id, connected_at = EXCLUDED.connected_at,
			remote_addr = EXCLUDED.remote_addr, epoch = EXCLUDED.epoch
		WHERE agent_presence.epoch < EXCLUDED.epoch
		RETURNING agent_id::text`, node, ids, at, remotes, epochs)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	out := make(map[string]bool, len(done))
	for _, id := range done {
		out[id] = true
	}
	return out, nil
}

// PresenceDigest sums up the connections the record says node holds:
// how many, and the sum of PresenceHash over them. A node compares it
// with its own connections' before it reads every row.
func (s *Store) PresenceDigest(ctx context.Context, node string) (n int, sum uint64, err error) {
	var total int64
	err = s.pool.QueryRow(ctx, `
		SELECT count(*), COALESCE(sum(('x' || left(agent_id::text, 8))::bit(32)::bigint * (2 * epoch + 1)) % 1152921504606846976, 0)::bigint
		FROM agent_presence WHERE node_id = $1`, node).Scan(&n, &total)
	if err != nil {
		return 0, 0, fmt.Errorf("presence: %w", err)
	}
	return n, uint64(total), nil
}

// PresenceHash is one connection's part of a PresenceDigest, which
// PostgreSQL computes too: the first 32 bits of the agent's id (random)
// times an odd number made of the epoch, so each epoch of an agent gives
// another value. A checksum, over what the node itself wrote.
func PresenceHash(agentID string, epoch int64) uint64 {
	u, _ := strconv.ParseUint(agentID[:min(8, len(agentID))], 16, 32)
	return u * uint64(2*epoch+1)
}

// AddPresenceHash adds h to a digest's sum, as PostgreSQL does: modulo
// 2^60.
func AddPresenceHash(sum, h uint64) uint64 { return (sum + h) & (1<<60 - 1) }

// ClearStray deletes the rows that name node for connections it no
// longer holds (each row's epoch given): what their disconnects would
// have deleted, had those been recorded. A row written since, by a newer
// connection anywhere, is left alone. It returns how many went.
func (s *Store) ClearStray(ctx context.Context, node string, rows map[string]int64) (int64, error) {
	ids, epochs := make([]string, 0, len(rows)), make([]int64, 0, len(rows))
	for id, e := range rows {
		ids, epochs = append(ids, id), append(epochs, e)
	}
	tag, err := s.pool.Exec(ctx, `
		DELETE FROM agent_presence p USING unnest($2::uuid[], $3::bigint[]) AS s(a, e)
		WHERE p.agent_id = s.a AND p.node_id = $1 AND p.epoch = s.e`, node, ids, epochs)
	if err != nil {
		return 0, fmt.Errorf("presence: %w", err)
	}
	return tag.RowsAffected(), nil
}

// EpochsHeldBy is the epoch of every connection the record says node
// holds, by agent.
func (s *Store) EpochsHeldBy(ctx context.Context, node string) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, "SELECT agent_id::text, epoch FROM agent_presence WHERE node_id = $1", node)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var epoch int64
		if err := rows.Scan(&id, &epoch); err != nil {
			return nil, fmt.Errorf("presence: %w", err)
		}
		out[id] = epoch
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	return out, nil
}

// Where is a connection's row: where and since when it was recorded.
type Where struct {
	Presence
	ConnectedAt time.Time
}

// PresencesOf reads the presence rows of ids; an agent connected nowhere
// has none.
func (s *Store) PresencesOf(ctx context.Context, ids []string) (map[string]Where, error) {
	rows, err := s.pool.Query(ctx, "SELECT agent_id::text, node_id, epoch, connected_at FROM agent_presence WHERE agent_id = ANY($1::uuid[])", ids)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	defer rows.Close()
	out := make(map[string]Where, len(ids))
	for rows.Next() {
		var id string
		var w Where
		if err := rows.Scan(&id, &w.NodeID, &w.Epoch, &w.ConnectedAt); err != nil {
			return nil, fmt.Errorf("presence: %w", err)
		}
		out[id] = w
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	return out, nil
}

// Disconnected records that the agent's connection of that epoch ended.
// A newer connection (on another node, or a newer one here) is left
// alone, however late this disconnect is seen.
func (s *Store) Disconnected(ctx context.Context, id string, epoch int64, at time.Time) error {
	_, err := s.pool.Exec(ctx, `
		WITH d AS (
			DELETE FROM agent_presence WHERE agent_id = $1 AND epoch = $2
		)
		UPDATE agents SET last_seen_at = $3 WHERE id = $1`, id, epoch, at)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	return nil
}

// Presence is where an agent is connected, if anywhere.
type Presence struct {
	NodeID string
	Epoch  int64
}

// PresenceOf reads where the agent is connected now; ok is false when it
// is connected nowhere.
func (s *Store) PresenceOf(ctx context.Context, id string) (p Presence, ok bool, err error) {
	err = s.pool.QueryRow(ctx, `SELECT node_id, epoch FROM agent_presence WHERE agent_id = $1`, id).Scan(&p.NodeID, &p.Epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return Presence{}, false, nil
	}
	if err != nil {
		return Presence{}, false, fmt.Errorf("presence: %w", err)
	}
	return p, true, nil
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

// HeldBy is how many agents' presence names node.
func (s *Store) HeldBy(ctx context.Context, node string) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM agent_presence WHERE node_id = $1", node).Scan(&n); err != nil {
		return 0, fmt.Errorf("presence: %w", err)
	}
	return n, nil
}
