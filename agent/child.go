package agent

import (
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Children of the agent (ffmpeg, the patch health check) die with it.
//
//   - Pdeathsig: the kernel sends the child SIGKILL when its parent goes,
//     however the agent ends (kill -9 included). Go checks right after
//     setting it whether the parent is already gone, so there is no
//     window at fork.
//   - Pdeathsig fires when the OS thread that forked the child exits, not
//     the process (the Go issues on SysProcAttr.Pdeathsig, e.g. #27505):
//     runChild locks the goroutine to its thread from Start until Wait
//     returns, so the runtime can neither reuse nor end that thread while
//     the child lives.
//   - Setpgid: the child leads a process group of its own, and a timeout
//     or cancel kills the group, so whatever the child started goes too.
//     (The death signal reaches the child alone; ffmpeg starts no
//     processes of its own for the sources the agent gives it.)
//
// The caller sets cmd's context (exec.CommandContext) for the time box.
func prepareChild(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Output pipes a grandchild kept open do not hold Wait up for long.
	cmd.WaitDelay = time.Second
}

// runChild starts a prepared cmd and waits for it, on one locked OS
// thread (see prepareChild).
func runChild(cmd *exec.Cmd) error {
	prepareChild(cmd)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Wait()
}
