package pgcluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

func TestStart_SupervisedRestartsWhatDiesAndStopsForGood(t *testing.T) {
	base, err := os.MkdirTemp("", "argus-pgc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o711))
	dir := filepath.Join(base, "pg")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A daemonised postmaster is already running: supervision adopts it.
	daemon, err := Start(ctx, Options{Dir: dir, Ephemeral: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = daemon.Stop(context.Background()) })
	first := PID(dir)
	c, err := Start(ctx, Options{Dir: dir, Ephemeral: true, Supervise: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	assert.False(t, c.Started(), "adopted, not started")
	assert.Equal(t, first, PID(dir))

	// When the adopted one ends, a child replaces it.
	require.NoError(t, daemon.Stop(ctx))
	second := waitNewPostmaster(t, c, first)
	assert.Equal(t, os.Getpid(), parentOf(t, second), "the replacement is this process's child")

	// A child that is killed is restarted.
	require.NoError(t, syscall.Kill(second, syscall.SIGKILL))
	third := waitNewPostmaster(t, c, second)
	assert.Equal(t, os.Getpid(), parentOf(t, third))

	// Stopped, it stays stopped.
	require.NoError(t, c.Stop(ctx))
	assert.Zero(t, PID(dir), "postmaster.pid is gone")
	assert.True(t, Exited(third), "the postmaster has exited")
	require.NoError(t, c.Stop(ctx), "stopping twice is harmless")
}

func TestStart_SupervisedFailsAtOnceWhenTheClusterCannotStart(t *testing.T) {
	base, err := os.MkdirTemp("", "argus-pgc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o711))
	dir := filepath.Join(base, "pg")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Dir: dir, Ephemeral: true})
	require.NoError(t, err)
	require.NoError(t, c.Stop(ctx))
	f, err := os.OpenFile(filepath.Join(dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("shared_buffers = 'plenty'\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())

	began := time.Now()
	_, err = Start(ctx, Options{Dir: dir, Ephemeral: true, Supervise: true})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "shared_buffers", "the postmaster's own complaint")
	assert.Less(t, time.Since(began), 10*time.Second, "not retried as though it had died")
	assert.Zero(t, PID(dir))
}

// waitNewPostmaster waits until a postmaster other than old runs for c and
// accepts connections, and returns its pid.
func waitNewPostmaster(t *testing.T, c *Cluster, old int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if pid := PID(c.Dir()); pid != 0 && pid != old && !Exited(pid) {
			if conn, err := pgx.Connect(ctx, c.ConnString("postgres")); err == nil {
				require.NoError(t, conn.Close(ctx))
				return pid
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no new postmaster in place of %d: %v", old, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	// pid (comm) state ppid ...
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ppid, err := strconv.Atoi(fields[1])
	require.NoError(t, err)
	return ppid
}
