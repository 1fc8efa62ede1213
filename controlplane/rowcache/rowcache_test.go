package rowcache_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/rowcache"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// listening starts a Listener on pool's database and waits until it listens.
func listening(t *testing.T, pool *pgxpool.Pool) *rowcache.Listener {
	t.Helper()
	l := rowcache.NewListener(func(ctx context.Context) (*pgx.Conn, error) {
		return pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 5*time.Second, l.Live, "listener up")
	return l
}

// token inserts an operator with one token and returns the token's id.
func token(t *testing.T, pool *pgxpool.Pool, name string) string {
	t.Helper()
	ctx := context.Background()
	var op string
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO operators (name) VALUES ($1) RETURNING id", name).Scan(&op))
	id := "tok" + name
	_, err := pool.Exec(ctx, `INSERT INTO operator_tokens (id, operator_id, secret_hash, scopes) VALUES ($1, $2, $3, '{remote_support}')`,
		id, op, make([]byte, 32))
	require.NoError(t, err)
	return id
}

// cached puts id in c as if just read, and checks it is there.
func cached(t *testing.T, c *rowcache.Cache[string], id string) {
	t.Helper()
	c.Put(id, "row", c.Gen())
	_, ok := c.Get(id)
	require.True(t, ok, "the cache holds %s", id)
}

func gone(c *rowcache.Cache[string], id string) func() bool {
	return func() bool { _, ok := c.Get(id); return !ok }
}

// A change made in the database by anyone (here: plain SQL on another
// connection, as another node or an administrator would) evicts the row.
// The TTL is an hour, so only the announcement can have done it.
func TestListener_ChangeInDatabaseEvictsTheRow(t *testing.T) {
	pool := testenv.Pool(t)
	l := listening(t, pool)
	tokens := rowcache.New[string](l, "operator_tokens", time.Hour, 100)
	a, b := token(t, pool, "alice"), token(t, pool, "bob")
	cached(t, tokens, a)
	cached(t, tokens, b)

	_, err := pool.Exec(context.Background(), "UPDATE operator_tokens SET revoked_at = now() WHERE id = $1", a)
	require.NoError(t, err)
	testenv.Eventually(t, 5*time.Second, gone(tokens, a), "revoked token evicted")
	_, ok := tokens.Get(b)
	assert.True(t, ok, "an unchanged token stays cached")
}

// A token's entry carries its operator's state, so any change to an
// operator empties the token cache.
func TestListener_OperatorChangeEmptiesTokenCache(t *testing.T) {
	pool := testenv.Pool(t)
	l := listening(t, pool)
	tokens := rowcache.New[string](l, "operator_tokens", time.Hour, 100)
	id := token(t, pool, "carol")
	cached(t, tokens, id)

	_, err := pool.Exec(context.Background(), "UPDATE operators SET disabled_at = now() WHERE name = 'carol'")
	require.NoError(t, err)
	testenv.Eventually(t, 5*time.Second, gone(tokens, id), "token of disabled operator evicted")
}

func TestListener_SessionEndEvictsTheSession(t *testing.T) {
	pool := testenv.Pool(t)
	l := listening(t, pool)
	sessions := rowcache.New[string](l, "support_sessions", time.Hour, 100)
	ctx := context.Background()
	token(t, pool, "dave")
	var tenant, agent, session string
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO tenants (name) VALUES ('acme') RETURNING id").Scan(&tenant))
	require.NoError(t, pool.QueryRow(ctx, "INSERT INTO agents (tenant_id, name, secret_hash) VALUES ($1, 'cam', $2) RETURNING id",
		tenant, make([]byte, 32)).Scan(&agent))
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO support_sessions (tenant_id, agent_id, operator_id, token_hash, reason, expires_at)
		SELECT $1, $2, id, $3, 'test', now() + interval '1 hour' FROM operators WHERE name = 'dave' RETURNING id`,
		tenant, agent, make([]byte, 32)).Scan(&session))
	cached(t, sessions, session)

	_, err := pool.Exec(ctx, "UPDATE support_sessions SET ended_at = now(), end_reason = 'deactivated' WHERE id = $1", session)
	require.NoError(t, err)
	testenv.Eventually(t, 5*time.Second, gone(sessions, session), "ended session evicted")
}

// Announcements made while the listener is down are lost, so losing it
// must empty the caches and keep them off until it listens again.
func TestListener_LostConnectionEmptiesCachesUntilBack(t *testing.T) {
	pool := testenv.Pool(t)
	l := listening(t, pool)
	tokens := rowcache.New[string](l, "operator_tokens", time.Hour, 100)
	id := token(t, pool, "erin")
	cached(t, tokens, id)

	var killed bool
	require.NoError(t, pool.QueryRow(context.Background(),
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN "+rowcache.Channel+"' AND datname = current_database()").Scan(&killed))
	require.True(t, killed)
	testenv.Eventually(t, 5*time.Second, gone(tokens, id), "cache emptied when the listener is lost")

	testenv.Eventually(t, 10*time.Second, l.Live, "listener back")
	cached(t, tokens, id)
	_, err := pool.Exec(context.Background(), "UPDATE operator_tokens SET revoked_at = now() WHERE id = $1", id)
	require.NoError(t, err)
	testenv.Eventually(t, 5*time.Second, gone(tokens, id), "changes are heard again after reconnecting")
}
