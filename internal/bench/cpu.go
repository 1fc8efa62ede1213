package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPUFigures say where the machine's cores went over a window, in cores
// (1.0 is one core busy throughout): each node, the harness (this process
// and its agent-holding children), and the rest (PostgreSQL, the system).
type CPUFigures struct {
	Window  string    `json:"window"`
	Machine float64   `json:"machine_cores"`
	Cores   int       `json:"cores"`
	Nodes   []float64 `json:"node_cores"`
	Harness float64   `json:"harness_cores"`
	Rest    float64   `json:"rest_cores"`
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux platform Go runs on.
const clockTicks = 100

// cpuMeter reads what the watched processes and the machine have used.
type cpuMeter struct {
	nodes   []int
	harness []int
}

type cpuReading struct {
	at            time.Time
	busy, total   uint64
	nodes         []uint64
	harness       uint64
	cores         int
	unreadableErr error
}

func (m cpuMeter) read() cpuReading {
	r := cpuReading{at: time.Now(), nodes: make([]uint64, len(m.nodes))}
	r.busy, r.total, r.cores, r.unreadableErr = machineTicks()
	for i, pid := range m.nodes {
		r.nodes[i] = processTicks(pid)
	}
	for _, pid := range m.harness {
		r.harness += processTicks(pid)
	}
	return r
}

// since is what was used between from and r.
func (r cpuReading) since(from cpuReading) (CPUFigures, error) {
	if err := errors.Join(from.unreadableErr, r.unreadableErr); err != nil {
		return CPUFigures{}, err
	}
	wall := r.at.Sub(from.at).Seconds() * clockTicks
	f := CPUFigures{Window: r.at.Sub(from.at).Round(10 * time.Millisecond).String(), Cores: r.cores}
	// The machine's ticks are summed over its cores.
	if all := float64(r.total - from.total); all > 0 {
		f.Machine = round2(float64(r.busy-from.busy) / all * float64(r.cores))
	}
	accounted := 0.0
	for i := range r.nodes {
		c := round2(float64(r.nodes[i]-from.nodes[i]) / wall)
		f.Nodes = append(f.Nodes, c)
		accounted += c
	}
	f.Harness = round2(float64(r.harness-from.harness) / wall)
	f.Rest = round2(max(f.Machine-accounted-f.Harness, 0))
	return f, nil
}

func round2(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }

// machineTicks reads /proc/stat's first line: busy and total ticks over
// every core, and how many cores there are.
func machineTicks() (busy, total uint64, cores int, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, err
	}
	lines := strings.Split(string(b), "\n")
	fields := strings.Fields(lines[0])
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, 0, 0, errors.New("unreadable /proc/stat")
	}
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "cpu") {
			cores++
		}
	}
	return busy, total, cores, nil
}

// processTicks is a process's user and system time so far, its
// children's that it waited for included; 0 once it is gone.
func processTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing one.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var t uint64
	for _, i := range []int{11, 12} { // utime, stime (fields 14, 15)
		if i < len(fields) {
			v, _ := strconv.ParseUint(fields[i], 10, 64)
			t += v
		}
	}
	return t
}

// profileCPU writes a CPU profile of node, taken over d, to path.
func profileCPU(ctx context.Context, node *Server, d time.Duration, path string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", node.pprof, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile: %s", resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
