package agent

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/argus-remote/argus/internal/testenv"
)

// silentListener accepts connections and never answers them.
func silentListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln
}

// waitExit waits for cmd, failing the test (and killing it) past limit.
func waitExit(t *testing.T, cmd *exec.Cmd, limit time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running after %v", cmd.Path, limit)
		return nil
	}
}

// ffmpeg's own time limit ends it on a source that never answers, with no
// agent timer involved: nothing here kills it.
func TestFFmpeg_GivesUpOnAHangingSourceByItself(t *testing.T) {
	bin := testenv.NeedTool(t, "ffmpeg", "ffmpeg")
	ln := silentListener(t)
	for _, src := range []string{"http://" + ln.Addr().String() + "/x.mjpeg", "rtsp://" + ln.Addr().String() + "/x"} {
		t.Run(strings.SplitN(src, ":", 2)[0], func(t *testing.T) {
			cmd := exec.Command(bin, ffmpegArgs(src, time.Second)...)
			require.NoError(t, cmd.Start())
			start := time.Now()
			assert.Error(t, waitExit(t, cmd, 15*time.Second), "no frame from a silent source")
			assert.Less(t, time.Since(start), 10*time.Second)
		})
	}
	// The options are ones ffmpeg takes for every kind of source.
	cmd := exec.Command(bin, ffmpegArgs("lavfi:testsrc=size=64x48:rate=1", time.Second)...)
	out, err := cmd.Output()
	require.NoError(t, err)
	assert.NotEmpty(t, out)
}

// A cancelled child takes its process group with it: a grandchild that
// holds no pipe of ours is killed too.
func TestRunChild_CancelKillsTheProcessGroup(t *testing.T) {
	pidFile := t.TempDir() + "/pid"
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `sleep 300 </dev/null >/dev/null 2>&1 & echo $! > `+pidFile+`; echo ready; wait`)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- runChild(cmd) }()
	buf := make([]byte, 6)
	_, err = stdout.Read(buf) // the grandchild is started once "ready" is written
	require.NoError(t, err)
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	grandchild, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	// A pidfd turns readable when its process ends: the event to await.
	pidfd, err := unix.PidfdOpen(grandchild, 0)
	require.NoError(t, err)
	defer unix.Close(pidfd)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("runChild did not return after cancel")
	}
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 5000)
	require.NoError(t, err)
	if n == 0 {
		_ = syscall.Kill(grandchild, syscall.SIGKILL)
		t.Fatal("the grandchild outlived the cancel")
	}
}
