package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binaries struct {
	once sync.Once
	dir  string
	err  error
}

// Binary returns the path of one of the project's programs (argus-server,
// argus-agent, argusctl), built once per test binary.
func Binary(t testing.TB, name string) string {
	t.Helper()
	binaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "argus-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		binaries.dir = dir
		root := moduleRoot()
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/argus-server", "./cmd/argus-agent", "./cmd/argusctl")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binaries.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if binaries.err != nil {
		t.Fatalf("testenv: %v", binaries.err)
	}
	return filepath.Join(binaries.dir, name)
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// TempDir returns a new directory that the postgres user can pass through
// (a private cluster below it runs as postgres when tests run as root). It
// is removed when the test ends.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "argus-t-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ServerProcess is a running argus-server binary.
type ServerProcess struct {
	Cmd     *exec.Cmd
	APIURL  string
	MQTTURL string
	DataDir string

	mu   sync.Mutex
	logs bytes.Buffer
	done chan struct{}
	err  error
}

// StartServer runs `argus-server serve` on loopback ports chosen by the
// kernel, with a private cluster in dataDir unless env sets a database
// URL, and waits until it reports ready. It is stopped when the test ends.
func StartServer(t testing.TB, dataDir string, env []string, args ...string) *ServerProcess {
	t.Helper()
	p := &ServerProcess{DataDir: dataDir, done: make(chan struct{})}
	full := append([]string{"serve", "--data-dir", dataDir, "--http-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	p.Cmd = exec.Command(Binary(t, "argus-server"), full...)
	p.Cmd.Env = append(os.Environ(), env...)
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Bytes()
			p.mu.Lock()
			p.logs.Write(line)
			p.logs.WriteByte('\n')
			p.mu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				API  string `json:"api"`
				MQTT string `json:"mqtt"`
			}
			if !signalled && json.Unmarshal(line, &rec) == nil && rec.Msg == "argus-server ready" {
				p.mu.Lock()
				p.APIURL, p.MQTTURL = rec.API, rec.MQTT
				p.mu.Unlock()
				signalled = true
				close(ready)
			}
		}
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("argus-server logs:\n%s", p.Logs())
		}
	})
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("argus-server exited before it was ready: %v\n%s", p.err, p.Logs())
	case <-time.After(2 * time.Minute):
		t.Fatalf("argus-server not ready after 2 minutes\n%s", p.Logs())
	}
	return p
}

// Logs returns what the server has logged so far.
func (p *ServerProcess) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// Done is closed when the process has exited.
func (p *ServerProcess) Done() <-chan struct{} { return p.done }

// ExitErr is the process's exit status once Done is closed.
func (p *ServerProcess) ExitErr() error { return p.err }

// Stop sends SIGTERM and waits for the process to exit (SIGKILL after a minute).
func (p *ServerProcess) Stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.Cmd.Process.Kill()
		<-p.done
		t.Errorf("argus-server did not stop within a minute of SIGTERM")
	}
}

// Run runs one of the project's programs to completion and returns its
// stdout and stderr.
func Run(t testing.TB, env []string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return strings.TrimSpace(out.String()), errOut.String(), err
}
