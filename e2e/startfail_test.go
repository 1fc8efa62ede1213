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
// the session manager's look for commands cut off by the last stop.
func TestStart_AFailedStepReturnsItsErrorAndDoesNotHang(t *testing.T) {
	for _, tc := range []struct {
		name, sql, want string
	}{
		{"fleet", `
			CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
			CREATE TRIGGER refuse_clear BEFORE DELETE ON agent_presence
			FOR EACH STATEMENT EXECUTE FUNCTION refuse()`, "refused by the test"},
		{"sessions", `ALTER TABLE commands RENAME TO commands_elsewhere`, `"commands" does not exist`},
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

			cfg := testenv.InProcessConfig(t, env, nil)
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
			case <-time.After(30 * time.Second):
				t.Fatal("Start neither returned nor failed within 30 s")
			}
		})
	}
}
