package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/viper"

	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/server"
)

// AllScopes is every operator scope, for test administrators.
var AllScopes = []string{"remote_support", "tenant:arm", "tenant:admin", "agent:admin", "audit:read", "operator:admin", "monitor"}

// Env is the environment a test's programs share: the database URL and
// data directory of the server under test.
type Env struct {
	DataDir     string
	DatabaseURL string
}

// NewEnv makes a data directory and a fresh migrated database.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	return &Env{DataDir: TempDir(t), DatabaseURL: DatabaseURL(t)}
}

// Vars are the environment variables that point a program at this Env.
func (e *Env) Vars(extra ...string) []string {
	return append([]string{"ARGUS_DATABASE_URL=" + e.DatabaseURL, "ARGUS_DATA_DIR=" + e.DataDir}, extra...)
}

// Operator creates an operator with the given scopes (all when none) and
// returns its token.
func (e *Env) Operator(t testing.TB, name string, scopes ...string) string {
	t.Helper()
	if len(scopes) == 0 {
		scopes = AllScopes
	}
	args := []string{"operator", "create", "--name", name}
	for _, s := range scopes {
		args = append(args, "--scope", s)
	}
	out, stderr, err := Run(t, e.Vars(), "argus-server", args...)
	if err != nil {
		t.Fatalf("operator create: %v\n%s", err, stderr)
	}
	return out
}

// StartServer runs the server binary against this Env.
func (e *Env) StartServer(t testing.TB, extraEnv []string, args ...string) *ServerProcess {
	t.Helper()
	return StartServer(t, e.DataDir, e.Vars(extraEnv...), args...)
}

// CLI runs argusctl against a server with a token.
func CLI(t testing.TB, apiURL, token string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	// No config file: only what the test passes counts.
	env := []string{"ARGUSCTL_SERVER=" + apiURL, "ARGUSCTL_TOKEN=" + token, "ARGUSCTL_CONFIG=", "XDG_CONFIG_HOME=" + filepath.Join(os.TempDir(), "argusctl-test-no-config")}
	return Run(t, env, "argusctl", args...)
}

// CLIJSON runs argusctl with -o json and decodes its output into v.
func CLIJSON(t testing.TB, apiURL, token string, v any, args ...string) {
	t.Helper()
	out, stderr, err := CLI(t, apiURL, token, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("argusctl %v: %v\n%s", args, err, stderr)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("argusctl %v: %v\n%s", args, err, out)
	}
}

// StartInProcess runs the server in this process against env, on loopback
// ports, for tests that need to reach inside (the broker's inline client).
func StartInProcess(t testing.TB, env *Env, overrides map[string]any) *server.Server {
	t.Helper()
	return StartInProcessWith(t, env, overrides, nil)
}

// StartInProcessWith is StartInProcess with a last say over the
// configuration (a span processor, say).
func StartInProcessWith(t testing.TB, env *Env, overrides map[string]any, mutate func(*server.Config)) *server.Server {
	t.Helper()
	cfg := InProcessConfig(t, env, overrides)
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.Start(context.Background(), cfg, TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close(context.Background()) })
	return srv
}

// InProcessConfig is the configuration StartInProcess starts a server
// with: env's database and data dir, loopback listeners on free ports,
// then overrides.
func InProcessConfig(t testing.TB, env *Env, overrides map[string]any) server.Config {
	t.Helper()
	v := viper.New()
	if err := settings.Load(v, nil, "", server.Keys); err != nil {
		t.Fatal(err)
	}
	v.Set("data-dir", env.DataDir)
	v.Set("database-url", env.DatabaseURL)
	v.Set("http-addr", "127.0.0.1:0")
	v.Set("mqtt-ws-addr", "127.0.0.1:0")
	for k, val := range overrides {
		v.Set(k, val)
	}
	cfg, err := server.FromViper(v)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestLogger logs warnings and errors to t.
func TestLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// AgentProcess is a running argus-agent binary.
type AgentProcess struct {
	Cmd      *exec.Cmd
	StateDir string

	mu    sync.Mutex
	lines []string
	wake  chan struct{}
	done  chan struct{}
}

// StartAgent runs `argus-agent run` on an enrolled state directory, with a
// fast heartbeat and short reconnect back-off. It is stopped when the test ends.
func StartAgent(t testing.TB, stateDir string, extraEnv ...string) *AgentProcess {
	t.Helper()
	p := &AgentProcess{StateDir: stateDir, wake: make(chan struct{}), done: make(chan struct{})}
	p.Cmd = exec.Command(Binary(t, "argus-agent"), "run", "--state-dir", stateDir,
		"--heartbeat-interval", "1s", "--reconnect-max-backoff", "2s", "--log-level", "debug")
	p.Cmd.Env = append(os.Environ(), extraEnv...)
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.scan(stderr)
		_ = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("argus-agent logs:\n%s", p.Logs())
		}
	})
	return p
}

func (p *AgentProcess) scan(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		close(p.wake)
		p.wake = make(chan struct{})
		p.mu.Unlock()
	}
}

// Logs returns what the agent has logged.
func (p *AgentProcess) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// WaitLog waits until the agent has logged n lines containing substr since
// line from, and returns the index after the last of them.
func (p *AgentProcess) WaitLog(t testing.TB, from int, substr string, n int, timeout time.Duration) int {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		found, idx := 0, from
		for i := from; i < len(p.lines); i++ {
			if strings.Contains(p.lines[i], substr) {
				found++
				idx = i + 1
				if found == n {
					break
				}
			}
		}
		wake := p.wake
		p.mu.Unlock()
		if found >= n {
			return idx
		}
		select {
		case <-wake:
		case <-p.done:
			t.Fatalf("argus-agent exited while waiting for %q\n%s", substr, p.Logs())
		case <-deadline:
			t.Fatalf("argus-agent did not log %q %d times within %v\n%s", substr, n, timeout, p.Logs())
		}
	}
}

// Done is closed when the agent process has exited.
func (p *AgentProcess) Done() <-chan struct{} { return p.done }

// LineCount is how many lines the agent has logged.
func (p *AgentProcess) LineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// Stop sends SIGTERM and waits.
func (p *AgentProcess) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Eventually polls cond every 50ms until it holds or timeout passes. For
// state that can only be observed by asking (an API), not awaited.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
