package e2e

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/pgcluster"
	"github.com/argus-remote/argus/internal/testenv"
)

// postmastersOf returns the processes whose command line names the cluster
// directory dir: the postmaster runs as `postgres -D dir`, while its
// backends rename themselves ("postgres: argus argus [local] idle").
func postmastersOf(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || pgcluster.Exited(pid) {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			if string(arg) == dir {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// reapPostmasters stops, when the test ends, any postmaster of dir that
// outlived its server, so a failing run leaves nothing behind.
func reapPostmasters(t *testing.T, dir string) {
	t.Cleanup(func() {
		for _, pid := range postmastersOf(t, dir) {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
		}
		testenv.Eventually(t, 30*time.Second, func() bool { return len(postmastersOf(t, dir)) == 0 }, "leftover postmasters stopped")
	})
}

func readyz(url string) int {
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The server restarts its private PostgreSQL when the postmaster dies, and
// is ready again without being restarted itself.
func TestServe_RestartsItsPostmasterWhenItDies(t *testing.T) {
	dataDir := testenv.TempDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	reapPostmasters(t, pgDir)
	srv := testenv.StartServer(t, dataDir, nil)
	token, stderr, err := testenv.Run(t, nil, "argus-server", "operator", "create", "--data-dir", dataDir,
		"--name", "admin", "--scope", "operator:admin")
	require.NoError(t, err, stderr)
	_, stderr, err = testenv.Run(t, nil, "argusctl", "whoami", "--server", srv.APIURL, "--token", token)
	require.NoError(t, err, stderr)

	old := pgcluster.PID(pgDir)
	require.NotZero(t, old, "the private cluster is running")
	require.NoError(t, syscall.Kill(old, syscall.SIGKILL))
	killed := time.Now()

	deadline := killed.Add(15 * time.Second)
	for {
		pid := pgcluster.PID(pgDir)
		if pid != 0 && pid != old && !pgcluster.Exited(pid) && readyz(srv.APIURL) == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 15 s of the postmaster's death (postmaster.pid: %d, killed: %d)", pid, old)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("ready again %v after the postmaster was killed", time.Since(killed).Round(time.Millisecond))

	select {
	case <-srv.Done():
		t.Fatalf("argus-server exited: %v", srv.ExitErr())
	default:
	}
	// Requests that reach the database work again, through the same server.
	_, stderr, err = testenv.Run(t, nil, "argusctl", "whoami", "--server", srv.APIURL, "--token", token)
	require.NoError(t, err, stderr)
	assert.Contains(t, srv.Logs(), "restarting", "the restart is logged")

	// Stopped, it stops the restarted cluster too.
	srv.Stop(t)
	assert.Equal(t, 0, exitCode(srv.ExitErr()), "clean exit on SIGTERM\n%s", srv.Logs())
	assert.Empty(t, postmastersOf(t, pgDir), "no postmaster left after a clean stop")
	assert.Zero(t, pgcluster.PID(pgDir), "postmaster.pid removed")
}

// A server killed outright takes its private PostgreSQL with it: the
// postmaster does not outlive it as an orphan.
func TestServe_KilledServerLeavesNoPostmaster(t *testing.T) {
	dataDir := testenv.TempDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	reapPostmasters(t, pgDir)
	srv := testenv.StartServer(t, dataDir, nil)
	// Processes that start it (pg_ctl, a check) may name the directory a
	// moment after the server is ready; one postmaster stays.
	testenv.Eventually(t, 10*time.Second, func() bool { return len(postmastersOf(t, pgDir)) == 1 }, "one postmaster runs on the cluster directory")

	require.NoError(t, srv.Cmd.Process.Signal(syscall.SIGKILL))
	<-srv.Done()
	killed := time.Now()

	deadline := killed.Add(10 * time.Second)
	for {
		left := postmastersOf(t, pgDir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postmaster %v of %s still running 10 s after the server was killed", left, pgDir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("no postmaster %v after the server was killed", time.Since(killed).Round(time.Millisecond))
}

// A data directory belongs to one serve at a time: a second is refused,
// naming the first's PID, and leaves the first's cluster alone; a one-off
// command shares the running cluster and leaves it running.
func TestServe_SecondServeOnAHeldDataDirIsRefused(t *testing.T) {
	dataDir := testenv.TempDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	reapPostmasters(t, pgDir)
	first := testenv.StartServer(t, dataDir, nil)
	postmaster := pgcluster.PID(pgDir)
	require.NotZero(t, postmaster)
	require.Equal(t, 200, readyz(first.APIURL))

	second := exec.Command(testenv.Binary(t, "argus-server"), "serve", "--data-dir", dataDir,
		"--http-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0")
	var stderr bytes.Buffer
	second.Stderr = &stderr
	require.NoError(t, second.Start())
	done := make(chan error, 1)
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		assert.Equal(t, 1, exitCode(err), "refused: %s", stderr.String())
	case <-time.After(20 * time.Second):
		// Not refused: it runs on the first's cluster. Stop it as an
		// operator would, and see what that does to the first.
		_ = second.Process.Signal(syscall.SIGTERM)
		<-done
		t.Errorf("a second serve on a held data dir was not refused")
	}
	assert.Contains(t, stderr.String(), "in use by argus-server serve (PID "+strconv.Itoa(first.Cmd.Process.Pid)+")", "names the holder")

	// The first never lost its database, and still has it after the
	// second exited.
	notReady := 0
	for range 20 {
		if readyz(first.APIURL) != 200 {
			notReady++
		}
		time.Sleep(50 * time.Millisecond)
	}
	assert.Zero(t, notReady, "the first server stays ready (of 20 probes over a second)")
	assert.Equal(t, postmaster, pgcluster.PID(pgDir), "the first's postmaster was never stopped")

	// A one-off command on the same data dir shares the running cluster.
	_, errOut, err := testenv.Run(t, []string{"ARGUS_DATABASE_URL="}, "argus-server", "operator", "create", "--data-dir", dataDir,
		"--name", "admin", "--scope", "operator:admin")
	require.NoError(t, err, errOut)
	assert.Equal(t, postmaster, pgcluster.PID(pgDir), "operator create left the server's cluster running")
	assert.False(t, pgcluster.Exited(postmaster))
	assert.Equal(t, 200, readyz(first.APIURL))

	// Once the first has gone, the data dir is free again.
	first.Stop(t)
	again := testenv.StartServer(t, dataDir, nil)
	assert.Equal(t, 200, readyz(again.APIURL))
}
