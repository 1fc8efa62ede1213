package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/server"
)

// A server whose start fails part way returns the database's error and
// stops what it had started, rather than waiting in its own clean-up for
// workers that never ran. Each case makes PostgreSQL refuse one start-up
// step: the fleet watcher's clearing of this node's presence rows, and
// the session manager's look for commands cut off by the last stop. A
// cluster node that never served does not drain either: there is nothing
// to hand over, and no load balancer sent it anything (its drain delay
// is 20 s here, so waiting it out would show).
func TestStart_AFailedStepReturnsItsErrorAndDoesNotHang(t *testing.T) {
	const refuseClear = `
		CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
		CREATE TRIGGER refuse_clear BEFORE DELETE ON agent_presence
		FOR EACH STATEMENT EXECUTE FUNCTION refuse()`
	clusterNode := statusNodeSettings("node-a", testenv.FreeAddr(t), testenv.FreeAddr(t))
	clusterNode["cluster-drain-delay"] = "20s"
	for _, tc := range []struct {
		name, sql, want string
		settings        map[string]any
	}{
		{"fleet", refuseClear, "refused by the test", nil},
		{"sessions", `ALTER TABLE commands RENAME TO commands_elsewhere`, `"commands" does not exist`, nil},
		{"fleet of a cluster node", refuseClear, "refused by the test", clusterNode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.NewEnv(t)
			ctx := context.Background()
			require.NoError(t, testenv.StartInProcess(t, env, nil).Close(ctx)) // migrated
			pool, err := pgxpool.New(ctx, env.DatabaseURL)
			require.NoError(t, err)
			defer pool.Close()
			_, err = pool.Exec(ctx, tc.sql)
			require.NoError(t, err)

			cfg := testenv.InProcessConfig(t, env, tc.settings)
			done := make(chan error, 1)
			go func() {
				srv, err := server.Start(ctx, cfg, testenv.TestLogger(t))
				if err == nil {
					_ = srv.Close(ctx)
				}
				done <- err
			}()
			select {
			case err := <-done:
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
			case <-time.After(8 * time.Second):
				t.Fatal("Start neither returned nor failed within 8 s")
			}
		})
	}
}
