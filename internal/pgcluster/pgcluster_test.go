package pgcluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStart_CreatesReusesAndStops(t *testing.T) {
	base, err := os.MkdirTemp("", "argus-pgc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o711))
	dir := filepath.Join(base, "pg")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c, err := Start(ctx, Options{Dir: dir, Ephemeral: true})
	require.NoError(t, err)
	assert.True(t, c.Started())
	require.NoError(t, c.EnsureDatabase(ctx, "argus"))
	require.NoError(t, c.EnsureDatabase(ctx, "argus"), "ensuring twice is harmless")

	conn, err := pgx.Connect(ctx, c.ConnString("argus"))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))

	// A second Start on a running cluster adopts it.
	adopted, err := Start(ctx, Options{Dir: dir, Ephemeral: true})
	require.NoError(t, err)
	assert.False(t, adopted.Started())

	pid := PID(dir)
	require.NotZero(t, pid)
	require.NoError(t, c.Stop(ctx))
	assert.Zero(t, PID(dir), "postmaster.pid is gone")
	assert.True(t, Exited(pid), "the postmaster has exited")

	// Started again, it reuses the cluster and its data.
	c, err = Start(ctx, Options{Dir: dir, Ephemeral: true})
	require.NoError(t, err)
	assert.True(t, c.Started())
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	conn, err = pgx.Connect(ctx, c.ConnString("argus"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var v int
	require.NoError(t, conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v))
	assert.Equal(t, 42, v)

	// Nothing listens on TCP; the socket is private.
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
}

func TestStart_RefusesOverlongSocketPath(t *testing.T) {
	long := filepath.Join(os.TempDir(), "x")
	for len(long) < socketPathMax {
		long = filepath.Join(long, "deeper-directory-name")
	}
	_, err := Start(context.Background(), Options{Dir: long})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "too long for a unix socket path")
}
