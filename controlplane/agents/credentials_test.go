package agents_test

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/agents"
	"github.com/argus-remote/argus/internal/testenv"
)

// One read returns the credentials of every agent asked for that
// exists, revoked ones flagged, and nothing for an id there is not.
func TestCredentials_OneReadForManyAgents(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	var tenant, live, revoked string
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO tenants (name) VALUES ('acme') RETURNING id::text`).Scan(&tenant))
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO agents (tenant_id, name, secret_hash) VALUES ($1, 'cam-1', sha256('a')) RETURNING id::text`, tenant).Scan(&live))
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO agents (tenant_id, name, secret_hash, revoked_at, revoke_reason) VALUES ($1, 'cam-2', sha256('b'), now(), 'lost') RETURNING id::text`, tenant).Scan(&revoked))

	type got struct {
		hash    []byte
		revoked bool
		tenant  string
	}
	seen := map[string]got{}
	err := agents.NewStore(pool).Credentials(ctx, []string{live, revoked, "00000000-0000-4000-8000-000000000001"}, func(id string, hash []byte, rev bool, tid string) {
		seen[id] = got{hash, rev, tid}
	})
	require.NoError(t, err)
	a, b := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
	assert.Equal(t, map[string]got{live: {a[:], false, tenant}, revoked: {b[:], true, tenant}}, seen)
}
