package agents_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// An agent that moves from node A to node B while A still holds its old
// connection: A's late disconnect, with any clock on A, must leave B's
// newer connection recorded.
func TestPresence_LateDisconnectLeavesTheNewerConnection(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var agentID string
	require.NoError(t, pool.QueryRow(ctx, `
		WITH t AS (INSERT INTO tenants (name) VALUES ('acme') RETURNING id)
		INSERT INTO agents (tenant_id, name, secret_hash) SELECT id, 'cam-1', sha256('x') FROM t RETURNING id::text`).Scan(&agentID))
	s := agents.NewStore(pool)

	now := time.Now().UTC().Truncate(time.Microsecond)
	epochA, err := s.Connected(ctx, agentID, "node-a", "10.0.0.1:1", now)
	require.NoError(t, err)
	// Node B's clock is behind A's: B's newer connection has the earlier
	// timestamp, and so may the disconnect A sees.
	epochB, err := s.Connected(ctx, agentID, "node-b", "10.0.0.1:2", now.Add(-time.Minute))
	require.NoError(t, err)
	assert.Greater(t, epochB, epochA, "every connection takes a later epoch")

	require.NoError(t, s.Disconnected(ctx, agentID, epochA, now.Add(time.Second)))
	p, ok, err := s.PresenceOf(ctx, agentID)
	require.NoError(t, err)
	require.True(t, ok, "the newer connection on node-b is still recorded")
	assert.Equal(t, agents.Presence{NodeID: "node-b", Epoch: epochB}, p)

	require.NoError(t, s.Disconnected(ctx, agentID, epochB, now.Add(2*time.Second)))
	_, ok, err = s.PresenceOf(ctx, agentID)
	require.NoError(t, err)
	assert.False(t, ok, "its own disconnect clears node-b's connection")
}

// A node that connects an agent learns where it was until then: the
// presence row its connection replaces.
func TestPresence_ConnectedFromNamesTheReplacedNode(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var agentID string
	require.NoError(t, pool.QueryRow(ctx, `
		WITH t AS (INSERT INTO tenants (name) VALUES ('acme') RETURNING id)
		INSERT INTO agents (tenant_id, name, secret_hash) SELECT id, 'cam-1', sha256('x') FROM t RETURNING id::text`).Scan(&agentID))
	s := agents.NewStore(pool)
	now := time.Now().UTC()

	epochA, _, had, err := s.ConnectedFrom(ctx, agentID, "node-a", "10.0.0.1:1", now)
	require.NoError(t, err)
	assert.False(t, had, "a first connection replaces nothing")

	epochB, prev, had, err := s.ConnectedFrom(ctx, agentID, "node-b", "10.0.0.1:2", now)
	require.NoError(t, err)
	require.True(t, had)
	assert.Equal(t, agents.Presence{NodeID: "node-a", Epoch: epochA}, prev)

	require.NoError(t, s.Disconnected(ctx, agentID, epochB, now))
	_, _, had, err = s.ConnectedFrom(ctx, agentID, "node-a", "10.0.0.1:3", now)
	require.NoError(t, err)
	assert.False(t, had, "a recorded disconnect leaves nothing to replace")
}

// A connection whose row is gone, or older, is recorded again under its
// own epoch; a newer connection's row (anywhere) is never overwritten by
// it.
func TestPresence_ReassertedOnlyOverNothingOrOlder(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var agentID string
	require.NoError(t, pool.QueryRow(ctx, `
		WITH t AS (INSERT INTO tenants (name) VALUES ('acme') RETURNING id)
		INSERT INTO agents (tenant_id, name, secret_hash) SELECT id, 'cam-1', sha256('x') FROM t RETURNING id::text`).Scan(&agentID))
	s := agents.NewStore(pool)
	now := time.Now().UTC().Truncate(time.Microsecond)

	epochB, err := s.Connected(ctx, agentID, "node-b", "10.0.0.1:2", now.Add(-time.Second))
	require.NoError(t, err)
	epochA, err := s.Connected(ctx, agentID, "node-a", "10.0.0.1:1", now)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "DELETE FROM agent_presence WHERE agent_id = $1", agentID)
	require.NoError(t, err)

	// B's old connection (not yet seen to end) re-asserts first, then A's.
	reassert := func(node, remote string, at time.Time, epoch int64) bool {
		t.Helper()
		done, err := s.Reasserted(ctx, node, []agents.Reassertion{{AgentID: agentID, Remote: remote, ConnectedAt: at, Epoch: epoch}})
		require.NoError(t, err)
		return done[agentID]
	}
	require.True(t, reassert("node-b", "10.0.0.1:2", now.Add(-time.Second), epochB), "no row: recorded again")
	require.True(t, reassert("node-a", "10.0.0.1:1", now, epochA), "an older connection's row: replaced")
	held, err := s.EpochsHeldBy(ctx, "node-a")
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{agentID: epochA}, held)

	assert.False(t, reassert("node-b", "10.0.0.1:2", now.Add(-time.Second), epochB), "a newer connection's row: left alone")
	rows, err := s.PresencesOf(ctx, []string{agentID})
	require.NoError(t, err)
	assert.Equal(t, agents.Presence{NodeID: "node-a", Epoch: epochA}, rows[agentID].Presence)
	assert.True(t, rows[agentID].ConnectedAt.Equal(now))
}

// store20000 is a store whose node-a holds 20,000 agents (one row each).
func store20000(b *testing.B) *agents.Store {
	pool := testenv.Pool(b)
	_, err := pool.Exec(context.Background(), `
		WITH t AS (INSERT INTO tenants (name) VALUES ('acme') RETURNING id),
		a AS (INSERT INTO agents (tenant_id, name, secret_hash) SELECT t.id, 'cam-' || g, sha256('x') FROM t, generate_series(1, 20000) g RETURNING id)
		INSERT INTO agent_presence (agent_id, node_id, connected_at, remote_addr, epoch) SELECT id, 'node-a', now(), '10.0.0.1:1', 1 FROM a`)
	require.NoError(b, err)
	return agents.NewStore(pool)
}

// The presence check's read at 20,000 agents on one node, when the
// digest differs.
func BenchmarkEpochsHeldBy_20000(b *testing.B) {
	s := store20000(b)
	b.ResetTimer()
	for range b.N {
		held, err := s.EpochsHeldBy(context.Background(), "node-a")
		require.NoError(b, err)
		require.Len(b, held, 20000)
	}
}

// The presence check's digest at 20,000 agents on one node: all most
// checks read.
func BenchmarkPresenceDigest_20000(b *testing.B) {
	s := store20000(b)
	b.ResetTimer()
	for range b.N {
		n, _, err := s.PresenceDigest(context.Background(), "node-a")
		require.NoError(b, err)
		require.Equal(b, 20000, n)
	}
}

// Many connections are re-asserted in one statement, each on its own
// terms: rows gone are recorded again, a newer connection's row stays.
func TestPresence_ReassertedManyAtOnce(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var ids []string
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO tenants (name) VALUES ('acme') RETURNING id::text`).Scan(new(string)))
	for i := range 3 {
		var id string
		require.NoError(t, pool.QueryRow(ctx, `INSERT INTO agents (tenant_id, name, secret_hash) SELECT id, $1, sha256('x') FROM tenants WHERE name = 'acme' RETURNING id::text`,
			fmt.Sprintf("cam-%d", i)).Scan(&id))
		ids = append(ids, id)
	}
	s := agents.NewStore(pool)
	now := time.Now().UTC().Truncate(time.Microsecond)
	var conns []agents.Reassertion
	for _, id := range ids {
		epoch, err := s.Connected(ctx, id, "node-a", "10.0.0.1:1", now)
		require.NoError(t, err)
		conns = append(conns, agents.Reassertion{AgentID: id, Remote: "10.0.0.1:1", ConnectedAt: now, Epoch: epoch})
	}
	// Rows of the first two gone; the third agent connected again on B.
	_, err := pool.Exec(ctx, "DELETE FROM agent_presence WHERE agent_id = ANY($1::uuid[])", ids[:2])
	require.NoError(t, err)
	newer, err := s.Connected(ctx, ids[2], "node-b", "10.0.0.2:1", now.Add(time.Second))
	require.NoError(t, err)

	done, err := s.Reasserted(ctx, "node-a", conns)
	require.NoError(t, err)
	assert.Equal(t, map[string]bool{ids[0]: true, ids[1]: true}, done)
	held, err := s.EpochsHeldBy(ctx, "node-a")
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{ids[0]: conns[0].Epoch, ids[1]: conns[1].Epoch}, held)
	rows, err := s.PresencesOf(ctx, ids[2:])
	require.NoError(t, err)
	assert.Equal(t, agents.Presence{NodeID: "node-b", Epoch: newer}, rows[ids[2]].Presence)
}

// A node's digest of its rows, as PostgreSQL sums it, is the one the node
// sums over its own connections; a row of another node, another epoch or
// one missing makes them differ. ClearStray deletes only the rows named
// with their node and epoch.
func TestPresenceDigest_IsTheNodesOwnSumAndClearStrayDeletesOnlyWhatItNames(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO tenants (name) VALUES ('acme') RETURNING id::text`).Scan(new(string)))
	s := agents.NewStore(pool)
	now := time.Now().UTC().Truncate(time.Microsecond)
	epochs := map[string]int64{}
	var ids []string
	for i := range 40 {
		var id string
		require.NoError(t, pool.QueryRow(ctx, `INSERT INTO agents (tenant_id, name, secret_hash) SELECT id, $1, sha256('x') FROM tenants WHERE name = 'acme' RETURNING id::text`,
			fmt.Sprintf("cam-%d", i)).Scan(&id))
		ids = append(ids, id)
		node := "node-a"
		if i%4 == 0 {
			node = "node-b"
		}
		var err error
		for range 1 + i%3 { // epochs 1 to 3
			if epochs[id], err = s.Connected(ctx, id, node, "10.0.0.1:1", now); err != nil {
				t.Fatal(err)
			}
		}
		if node != "node-a" {
			delete(epochs, id)
		}
	}
	sum := func(m map[string]int64) uint64 {
		var x uint64
		for id, e := range m {
			x = agents.AddPresenceHash(x, agents.PresenceHash(id, e))
		}
		return x
	}
	n, got, err := s.PresenceDigest(ctx, "node-a")
	require.NoError(t, err)
	assert.Equal(t, len(epochs), n)
	assert.Equal(t, sum(epochs), got, "PostgreSQL's sum is the node's own")
	n, got, err = s.PresenceDigest(ctx, "node-c")
	require.NoError(t, err)
	assert.Equal(t, 0, n)
	assert.Zero(t, got)

	// Agent 1's row is an older connection's, agent 2's is gone.
	_, err = pool.Exec(ctx, "UPDATE agent_presence SET epoch = epoch - 1 WHERE agent_id = $1", ids[1])
	require.NoError(t, err)
	_, got, err = s.PresenceDigest(ctx, "node-a")
	require.NoError(t, err)
	assert.NotEqual(t, sum(epochs), got, "an older epoch differs")

	// The stray rows named: agent 1 under its row's epoch, agent 3 under
	// one it no longer has, agent 4 under node-a though node-b holds it.
	gone, err := s.ClearStray(ctx, "node-a", map[string]int64{ids[1]: epochs[ids[1]] - 1, ids[3]: epochs[ids[3]] + 1, ids[4]: 1})
	require.NoError(t, err)
	assert.EqualValues(t, 1, gone)
	held, err := s.EpochsHeldBy(ctx, "node-a")
	require.NoError(t, err)
	assert.NotContains(t, held, ids[1])
	assert.Contains(t, held, ids[3])
	rows, err := s.PresencesOf(ctx, ids[4:5])
	require.NoError(t, err)
	assert.Equal(t, "node-b", rows[ids[4]].NodeID, "another node's row is left alone")
}
