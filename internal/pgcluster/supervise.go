package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Restart back-off of a supervised cluster: the first restart waits
// restartMin, each further one twice as long up to restartMax. A postmaster
// that stayed up for restartReset starts the count again.
const (
	restartMin   = 500 * time.Millisecond
	restartMax   = 10 * time.Second
	restartReset = time.Minute
)

// supervisor keeps a cluster's postmaster running as a child of this
// process (see Options.Supervise).
type supervisor struct {
	c        *Cluster
	stop     chan struct{} // closed by Stop
	stopOnce sync.Once
	done     chan struct{} // closed when run returns
}

// supervise starts the supervisor and waits until the cluster first
// accepts connections. It reports whether the postmaster is this
// process's child (rather than one adopted).
func (c *Cluster) supervise(ctx context.Context) (child bool, err error) {
	s := &supervisor{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	first := make(chan firstLife, 1)
	go s.run(first)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	select {
	case f := <-first:
		if f.err != nil {
			return false, f.err
		}
		c.sup = s
		return f.child, nil
	case <-ctx.Done():
		s.halt(context.WithoutCancel(ctx))
		return false, fmt.Errorf("pgcluster: cluster in %s not ready: %w%s", c.dir, ctx.Err(), logTail(c.logFile()))
	}
}

// firstLife is how the first postmaster the supervisor ran came up.
type firstLife struct {
	child bool
	err   error
}

// run keeps a postmaster running until Stop. A postmaster already running
// on the directory is adopted and watched; when it exits, or when there was
// none, one is started as a child. One that exits is replaced after the
// back-off. Only the very first child failing before it was ever ready
// ends run (Start reports it): that is a cluster that cannot start, not
// one that died.
func (s *supervisor) run(first chan<- firstLife) {
	defer close(s.done)
	c := s.c
	backoff := restartMin
	everReady := false
	for {
		began := time.Now()
		ready := false
		onReady := func(child bool) {
			ready = true
			if !everReady {
				everReady = true
				first <- firstLife{child: child}
			} else {
				c.log.Info("restarted private PostgreSQL cluster", "dir", c.dir, "pid", PID(c.dir))
			}
		}
		child, err := s.life(onReady)
		select {
		case <-s.stop:
			return
		default:
		}
		if !everReady && child && !ready {
			first <- firstLife{err: fmt.Errorf("pgcluster: postgres exited before it was ready: %w%s", err, logTail(c.logFile()))}
			return
		}
		if ready && time.Since(began) >= restartReset {
			backoff = restartMin
		}
		c.log.Warn("private PostgreSQL cluster exited; restarting", "dir", c.dir, "err", err, "log", c.logFile(), "restart_in", backoff)
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, restartMax)
	}
}

// life runs one postmaster until it exits or Stop: the one already running
// on the directory if there is one, else a new child. onReady is called
// (from the same goroutine as run's, before life returns) once it accepts
// connections. It reports whether the postmaster was a child, and why it
// ended.
func (s *supervisor) life(onReady func(child bool)) (child bool, err error) {
	c := s.c
	exited, stopIt, child, err := s.launch()
	if err != nil {
		return child, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readyc := make(chan struct{})
	go func() {
		if c.pollReady(ctx) == nil {
			close(readyc)
		}
	}()
	for {
		select {
		case <-readyc:
			onReady(child)
			readyc = nil
		case err := <-exited:
			return child, err
		case <-s.stop:
			stopIt()
			return child, <-exited
		}
	}
}

// launch adopts the postmaster running on the directory, or starts one as
// a child. exited yields once it has exited; stopIt asks it to shut down.
func (s *supervisor) launch() (exited <-chan error, stopIt func(), child bool, err error) {
	c := s.c
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if pid := PID(c.dir); pid != 0 && c.running(ctx) {
		ch := watchExit(pid)
		c.log.Warn("adopting a PostgreSQL cluster this server did not start; it is supervised from when it next exits", "dir", c.dir, "pid", pid)
		return ch, func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if out, err := c.run(ctx, "pg_ctl", "-D", c.dir, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
				c.log.Error("stopping adopted PostgreSQL cluster", "dir", c.dir, "err", err, "out", string(out))
			}
		}, false, nil
	}
	cmd, ch, err := c.startChild()
	if err != nil {
		return nil, nil, true, err
	}
	// SIGINT is PostgreSQL's fast shutdown: sessions are ended, nothing
	// committed is lost.
	return ch, func() { _ = cmd.Process.Signal(syscall.SIGINT) }, true, nil
}

// startChild starts the postmaster as a child of this process, tied to its
// life: should this process die, even by SIGKILL, the kernel sends the
// postmaster SIGINT (fast shutdown). The channel yields its exit.
func (c *Cluster) startChild() (*exec.Cmd, <-chan error, error) {
	logf, err := os.OpenFile(c.logFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("pgcluster: %w", err)
	}
	defer logf.Close()
	if err := c.chown(logf.Name()); err != nil {
		return nil, nil, err
	}
	cmd := c.command(context.Background(), "postgres", "-D", c.dir)
	cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
	cmd.Stdout, cmd.Stderr = logf, logf
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		// The parent-death signal fires when the thread that forked the
		// child ends, not the process: this goroutine keeps its thread
		// for the child's whole life, and never unlocks it, so the thread
		// ends with the goroutine, after the child has been reaped.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, nil, fmt.Errorf("pgcluster: start postgres: %w", err)
	}
	c.log.Info("started private PostgreSQL cluster", "dir", c.dir, "pid", cmd.Process.Pid)
	return cmd, exited, nil
}

// watchExit yields once process pid (not a child of this one) has exited.
func watchExit(pid int) <-chan error {
	ch := make(chan error, 1)
	gone := fmt.Errorf("adopted postmaster %d exited", pid)
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// Gone already, or a kernel without pidfds (before 5.3): look
		// at the process now and then instead.
		go func() {
			for !Exited(pid) {
				time.Sleep(250 * time.Millisecond)
			}
			ch <- gone
		}()
		return ch
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		// A pidfd turns readable when its process exits.
		for {
			if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
				break
			}
		}
		ch <- gone
	}()
	return ch
}

// halt stops the supervisor and its postmaster, and waits until both have.
func (s *supervisor) halt(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("pgcluster: postmaster of %s still running: %w", s.c.dir, ctx.Err())
	}
	s.c.log.Info("stopped private PostgreSQL cluster", "dir", s.c.dir)
	return nil
}

func (c *Cluster) logFile() string { return filepath.Join(c.dir, "postgres.log") }
