package cluster_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/cluster"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// A node cut off from PostgreSQL fences itself before the others can see
// its lease run out, and serves again once it renews; while it is alive
// its presence stays, and once its lease has run out another node
// clears it.
func TestMembership_FencesBeforeTheLeaseRunsOutAndClearsDeadNodes(t *testing.T) {
	url := testenv.DatabaseURL(t)
	direct, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(direct.Close)
	proxy, via := testenv.PostgresProxy(t, url)
	cut, err := pgxpool.New(context.Background(), via)
	require.NoError(t, err)
	t.Cleanup(cut.Close)

	const lease = 3 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.DiscardHandler)
	n1 := cluster.NewMembership(cut, cluster.Self{ID: "n1", APIURL: "http://n1"}, lease, lease/5, log)
	fenced, unfenced := make(chan time.Time, 4), make(chan time.Time, 4)
	n1.OnFence = func() { fenced <- time.Now() }
	n1.OnUnfence = func() { unfenced <- time.Now() }
	require.NoError(t, n1.Join(ctx))
	go n1.Run(ctx)
	n2 := cluster.NewMembership(direct, cluster.Self{ID: "n2"}, lease, lease/5, log)
	require.NoError(t, n2.Join(ctx))
	go n2.Run(ctx)

	// An agent held by n1.
	var agentID string
	require.NoError(t, direct.QueryRow(ctx, `
		WITH t AS (INSERT INTO tenants (name) VALUES ('acme') RETURNING id)
		INSERT INTO agents (tenant_id, name, secret_hash) SELECT id, 'cam-1', sha256('x') FROM t RETURNING id::text`).Scan(&agentID))
	_, err = direct.Exec(ctx, `INSERT INTO agent_presence (agent_id, node_id, epoch) VALUES ($1, 'n1', 1)`, agentID)
	require.NoError(t, err)
	presence := func() int {
		var n int
		require.NoError(t, direct.QueryRow(ctx, `SELECT count(*) FROM agent_presence WHERE node_id = 'n1'`).Scan(&n))
		return n
	}
	leaseLeft := func() time.Duration {
		var left float64
		require.NoError(t, direct.QueryRow(ctx, `SELECT EXTRACT(EPOCH FROM lease_expires_at - now()) FROM nodes WHERE id = 'n1'`).Scan(&left))
		return time.Duration(left * float64(time.Second))
	}
	time.Sleep(2 * lease / 5) // two renewals' time: the others' sweeps run and must leave n1's agent alone
	assert.False(t, n1.Fenced())
	assert.Equal(t, 1, presence(), "a live node's presence is kept")

	proxy.Cut()
	cutAt := time.Now()
	var at time.Time
	select {
	case at = <-fenced:
	case <-time.After(2 * lease):
		t.Fatal("the node cut off from the database did not fence itself")
	}
	assert.True(t, n1.Fenced())
	assert.Less(t, at.Sub(cutAt), lease, "fenced within its lease")
	assert.Greater(t, leaseLeft(), time.Duration(0), "fenced while the others still see its lease valid")

	require.Eventually(t, func() bool { return presence() == 0 }, 2*lease, 50*time.Millisecond,
		"n2 clears the presence of a node whose lease has run out")
	nodes, err := cluster.Nodes(ctx, direct)
	require.NoError(t, err)
	require.Len(t, nodes, 2)
	assert.Equal(t, "n1", nodes[0].ID)
	assert.False(t, nodes[0].Alive)
	assert.True(t, nodes[1].Alive)

	proxy.Restore()
	select {
	case <-unfenced:
	case <-time.After(3 * lease):
		t.Fatal("the node did not serve again once it could renew")
	}
	assert.False(t, n1.Fenced())
	require.NoError(t, n1.Leave(ctx))
	nodes, err = cluster.Nodes(ctx, direct)
	require.NoError(t, err)
	assert.NotNil(t, nodes[0].LeftAt)
	assert.False(t, nodes[0].Alive)
}
