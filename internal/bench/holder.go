package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/argus-remote/argus/agent"
)

// A harness process holds at most this many agents by default: each is a
// descriptor, and the machine's per-process limit (20,000 here) must also
// leave room for the process's own.
const DefaultAgentsPerProcess = 15000

// holder is a child harness process holding a share of the agents, so
// that no process needs more descriptors than its limit allows.
type holder struct {
	cmd  *exec.Cmd
	done chan error
}

// holderReport is the child's one line on stdout once its agents are in.
type holderReport struct {
	Connected int     `json:"connected"`
	Seconds   float64 `json:"seconds"`
	FDLimit   uint64  `json:"fd_limit"`
	Error     string  `json:"error,omitempty"`
}

// spawnHolder runs self's hold-agents command for states, dialling from
// sources addresses starting at the offset-th, and waits for its report.
func spawnHolder(ctx context.Context, self string, states []agent.State, sources, offset int, brokerURLs []string) (*holder, holderReport, error) {
	f, err := os.CreateTemp("", "argus-bench-states-*.json")
	if err != nil {
		return nil, holderReport{}, err
	}
	defer os.Remove(f.Name())
	if err := json.NewEncoder(f).Encode(states); err != nil {
		f.Close()
		return nil, holderReport{}, err
	}
	if err := f.Close(); err != nil {
		return nil, holderReport{}, err
	}
	args := []string{"hold-agents", "--states", f.Name(), "--sources", fmt.Sprint(sources), "--source-offset", fmt.Sprint(offset)}
	if len(brokerURLs) > 0 {
		args = append(args, "--broker-urls", strings.Join(brokerURLs, ","))
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, holderReport{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, holderReport{}, err
	}
	h := &holder{cmd: cmd, done: make(chan error, 1)}
	lines := make(chan holderReport, 1)
	go func() {
		var rep holderReport
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			if err := json.Unmarshal(sc.Bytes(), &rep); err != nil {
				rep.Error = "unreadable report: " + err.Error()
			}
		} else {
			rep.Error = "exited without a report"
		}
		lines <- rep
		_, _ = io.Copy(io.Discard, out)
		h.done <- cmd.Wait()
	}()
	select {
	case rep := <-lines:
		if rep.Error != "" {
			h.stop()
			return nil, rep, fmt.Errorf("agent holder: %s", rep.Error)
		}
		return h, rep, nil
	case <-ctx.Done():
		h.stop()
		return nil, holderReport{}, ctx.Err()
	}
}

// stop ends the child and its agents.
func (h *holder) stop() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(time.Minute):
		_ = h.cmd.Process.Kill()
		<-h.done
	}
}

// HoldAgents is the child's side: it connects the agents in file, reports
// on w, and holds them until ctx ends.
func HoldAgents(ctx context.Context, file string, sources, offset int, brokerURLs []string, w io.Writer) error {
	rep := holderReport{FDLimit: RaiseFDLimit()}
	report := func() error { return json.NewEncoder(w).Encode(rep) }
	b, err := os.ReadFile(file)
	if err != nil {
		rep.Error = err.Error()
		return report()
	}
	var states []agent.State
	if err := json.Unmarshal(b, &states); err != nil {
		rep.Error = err.Error()
		return report()
	}
	f := &Fleet{SourceOffset: offset, BrokerURLs: brokerURLs}
	defer f.StopAgents()
	_, total, err := f.Connect(ctx, states, sources, 512)
	if err != nil {
		rep.Error = err.Error()
		return report()
	}
	rep.Connected, rep.Seconds = len(states), total.Seconds()
	quietCollector()
	if err := report(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// quietCollector stops this process's periodic garbage collection once
// its agents are in. Seven harness processes hold 99,500 agents on the
// machine whose servers are measured, and their collections (forced
// every two minutes at least) took 0.13 cores idle and 0.16-0.33 during
// a run of pings. It collects again as its memory nears what it holds now
// and 512 MiB more, which a reconnect wave does not reach now that an
// agent's connection holds 24.6 KiB (before its Receive Maximum, 534 KiB:
// a wave drove a 7.8 GB heap into the limit, and one collection took
// 8.6 s).
func quietCollector() {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	debug.SetMemoryLimit(int64(ms.Sys-ms.HeapReleased) + 512<<20)
	debug.SetGCPercent(-1)
}
