// Package bench is argus-bench's harness: it starts a real argus-server,
// enrolls and connects real agents (the agent library) over
// MQTT-over-WebSocket, and measures what the performance targets name.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// OpsToken is the harness's second factor.
const OpsToken = "bench-ops-token-0123456789abcdef0123456789"

// Server is a running argus-server process.
type Server struct {
	cmd     *exec.Cmd
	args    []string
	dir     string
	APIURL  string
	MQTTURL string
	pprof   string        // the server's loopback debug listener
	extra   []string      // more environment, for every command run against it
	done    chan struct{} // closed once the process has exited
}

// StartServer runs bin with a private PostgreSQL in a fresh directory and
// remote support on for loopback operators.
func StartServer(ctx context.Context, bin string, extraArgs ...string) (*Server, error) {
	return StartServerEnv(ctx, bin, nil, extraArgs...)
}

// StartServerEnv is StartServer with more environment (a cluster node's
// settings), kept for the commands run against it later.
func StartServerEnv(ctx context.Context, bin string, env []string, extraArgs ...string) (*Server, error) {
	dir, err := os.MkdirTemp("", "argus-bench-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	api, err := freeAddr()
	if err != nil {
		return nil, err
	}
	mq, err := freeAddr()
	if err != nil {
		return nil, err
	}
	pprof := os.Getenv("ARGUS_BENCH_PPROF")
	if pprof == "" {
		if pprof, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	s := &Server{dir: dir, pprof: pprof, extra: env, done: make(chan struct{}), args: append([]string{"--http-addr", api, "--mqtt-ws-addr", mq}, extraArgs...)}
	return s, s.start(ctx, bin, s.args...)
}

func (s *Server) env() []string {
	env := append(os.Environ(), s.extra...)
	return append(env, "ARGUS_DATA_DIR="+s.dir, "REMOTE_SUPPORT_ENABLED=true",
		"REMOTE_SUPPORT_OPERATOR_CIDRS=127.0.0.0/8", "ARGUS_OPS_TOKEN="+OpsToken, "ARGUS_ENROLL_RATE_LIMIT=100000000",
		"ARGUS_LOG_LEVEL=warn", "ARGUS_PPROF_ADDR="+s.pprof)
}

func (s *Server) start(ctx context.Context, bin string, extraArgs ...string) error {
	args := append([]string{"serve", "--log-format", "json", "--log-level", "info"}, extraArgs...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = s.env()
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	ready := make(chan error, 1)
	done := s.done
	// ARGUS_BENCH_LOG_DIR keeps every server's log, for a run to be read
	// after it.
	var logTo io.Writer = io.Discard
	if dir := os.Getenv("ARGUS_BENCH_LOG_DIR"); dir != "" {
		lf, err := os.OpenFile(filepath.Join(dir, "server-"+filepath.Base(s.dir)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			defer func() { go func() { <-done; lf.Close() }() }()
			logTo = lf
		}
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			_, _ = logTo.Write(append(sc.Bytes(), '\n'))
			var rec struct {
				Msg, API, MQTT string
			}
			if !signalled && json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "argus-server ready" {
				s.APIURL, s.MQTTURL = rec.API, rec.MQTT
				signalled = true
				ready <- nil
			}
		}
		err := s.cmd.Wait()
		if !signalled {
			ready <- fmt.Errorf("argus-server exited before it was ready: %v", err)
		}
		close(done)
	}()
	select {
	case err := <-ready:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		return errors.New("argus-server not ready after 2 minutes")
	}
}

// Operator creates an operator with every scope and returns its token.
func (s *Server) Operator(bin, name string) (string, error) {
	args := []string{"operator", "create", "--name", name}
	for _, sc := range []string{"remote_support", "tenant:arm", "tenant:admin", "agent:admin", "audit:read", "monitor"} {
		args = append(args, "--scope", sc)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = s.env()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("operator create: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// FreeOSMemory has the server collect its garbage and return the free
// memory to the system, so that a resident-memory baseline taken next
// holds only what is live: garbage in it would be collected, and its
// memory reused, as the clients being measured arrive.
func (s *Server) FreeOSMemory() error {
	resp, err := http.Post("http://"+s.pprof+"/debug/free-os-memory", "", nil)
	if err != nil {
		return fmt.Errorf("free os memory: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("free os memory: %s", resp.Status)
	}
	return nil
}

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// FDs is how many descriptors the server has open.
func (s *Server) FDs() int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.PID()))
	return len(ents)
}

// RSS is the server's resident memory in bytes.
func (s *Server) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.PID()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// Metric reads one series from /metrics.
func (s *Server) Metric(series string) (float64, error) {
	resp, err := http.Get(s.APIURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no series %s", series)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// Stop sends SIGTERM and waits.
func (s *Server) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Kill stops the server at once (the postmaster keeps running).
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Restart starts the same server again on the same data directory.
func (s *Server) Restart(ctx context.Context, bin string, extraArgs ...string) error {
	s.done = make(chan struct{})
	return s.start(ctx, bin, extraArgs...)
}

// Cleanup removes the data directory (after Stop).
func (s *Server) Cleanup() {
	// The private cluster stops with the server; its files go with the dir.
	_ = os.RemoveAll(filepath.Clean(s.dir))
}
