package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
)

// Quantiles summarises latencies.
type Quantiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func quantiles(d []time.Duration) Quantiles {
	if len(d) == 0 {
		return Quantiles{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(d)-1))
		return float64(d[i].Microseconds()) / 1000
	}
	return Quantiles{N: len(d), P50: at(.5), P90: at(.9), P99: at(.99), Max: float64(d[len(d)-1].Microseconds()) / 1000}
}

// RaiseFDLimit lifts the open-file limit to its hard maximum (as root, as
// far as the kernel allows) and returns the limit in force.
func RaiseFDLimit() uint64 {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
		return 0
	}
	want := uint64(1 << 20)
	if r.Max < want {
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
			return want
		}
		want = r.Max
	}
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: r.Max})
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	return r.Cur
}

// Fleet is a server with a consenting, armed tenant and agents.
type Fleet struct {
	Server *Server
	Bin    string
	API    *apiclient.Client
	agents []*runningAgent
	log    io.Writer
	// SourceOffset shifts the loopback source addresses agents dial
	// from, so several harness processes use different ones.
	SourceOffset int
	// BrokerURLs, when set, are every agent's brokers (a cluster's
	// nodes), tried in the agent's own random order; otherwise each agent
	// dials its state's one.
	BrokerURLs []string
}

type runningAgent struct {
	state  agent.State
	cancel context.CancelFunc
	done   chan struct{}
	events chan agent.Event
}

// NewFleet starts a server and prepares the tenant "bench".
func NewFleet(ctx context.Context, bin string, log io.Writer) (*Fleet, error) {
	srv, err := StartServer(ctx, bin)
	if err != nil {
		return nil, err
	}
	tok, err := srv.Operator(bin, "bench")
	if err != nil {
		srv.Stop()
		return nil, err
	}
	f := &Fleet{Server: srv, Bin: bin, API: &apiclient.Client{BaseURL: srv.APIURL, Token: tok, OpsToken: OpsToken}, log: log}
	if err := f.prepareTenant(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// prepareTenant creates the tenant "bench", signs its consent and arms it.
func (f *Fleet) prepareTenant(ctx context.Context) error {
	for _, step := range []struct {
		path string
		body map[string]string
	}{
		{"/v1/tenants", map[string]string{"name": "bench"}},
		{"/v1/tenants/bench/consent", map[string]string{"document_id": "BENCH", "signed_by": "bench"}},
		{"/v1/tenants/bench/arm", map[string]string{"reason": "benchmark"}},
	} {
		if err := f.API.Do(ctx, "POST", step.path, step.body, nil); err != nil {
			return err
		}
	}
	return nil
}

// session is a live session the harness sends commands in.
type session struct {
	id  string
	api apiclient.Client // the fleet's client with the session's token
}

// openSession activates a two-hour session on agentID.
func (f *Fleet) openSession(ctx context.Context, agentID string) (*session, error) {
	var res struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	if err := f.API.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "bench", "agent": agentID, "reason": "bench", "ttl": "120m"}, &res); err != nil {
		return nil, err
	}
	s := &session{id: res.Session.ID, api: *f.API}
	s.api.SessionToken = res.Token
	return s, nil
}

// ping sends one audited ping and times its round trip.
func (s *session) ping(ctx context.Context) (time.Duration, error) {
	return s.pingVia(ctx, s.api.BaseURL)
}

// pingVia is ping through the API at base (another node's).
func (s *session) pingVia(ctx context.Context, base string) (time.Duration, error) {
	var out apiclient.CommandResult
	api := s.api
	api.BaseURL = base
	t0 := time.Now()
	err := api.Do(ctx, "POST", "/v1/support/sessions/"+s.id+"/commands", map[string]string{"name": "ping"}, &out)
	if err == nil && out.Status != "ok" {
		err = fmt.Errorf("ping: %s", out.Status)
	}
	return time.Since(t0), err
}

// pings times k sequential pings after a warm-up of connections and caches.
func (f *Fleet) pings(ctx context.Context, s *session, k int) (Quantiles, error) {
	for i := 0; i < 50; i++ {
		if _, err := s.ping(ctx); err != nil {
			return Quantiles{}, err
		}
	}
	lat := make([]time.Duration, 0, k)
	for i := 0; i < k; i++ {
		d, err := s.ping(ctx)
		if err != nil {
			return Quantiles{}, err
		}
		lat = append(lat, d)
	}
	return quantiles(lat), nil
}

// Close stops the agents and the server.
func (f *Fleet) Close() {
	f.StopAgents()
	f.Server.Stop()
	f.Server.Cleanup()
}

// StopAgents stops every agent.
func (f *Fleet) StopAgents() {
	for _, a := range f.agents {
		a.cancel()
	}
	for _, a := range f.agents {
		<-a.done
	}
	f.agents = nil
}

// Enroll enrolls n agents through the API, conc at a time.
func (f *Fleet) Enroll(ctx context.Context, n, conc int) ([]agent.State, error) {
	states := make([]agent.State, n)
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var tok apiclient.EnrollmentToken
			err := f.API.Do(ctx, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": "bench", "name": fmt.Sprintf("a%06d", i)}, &tok)
			var st struct {
				agent.State
			}
			if err == nil {
				err = (&apiclient.Client{BaseURL: f.API.BaseURL}).Do(ctx, "POST", "/v1/enroll", map[string]string{"token": tok.Token}, &st)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			states[i] = st.State
		}()
	}
	wg.Wait()
	return states, firstErr
}

// Connect runs one agent per state, from sources loopback addresses in
// turn, conc connecting at a time, and returns each one's connect time.
func (f *Fleet) Connect(ctx context.Context, states []agent.State, sources, conc int) ([]time.Duration, time.Duration, error) {
	lats := make([]time.Duration, len(states))
	var failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	quiet := slog.New(slog.DiscardHandler)
	if dir := os.Getenv("ARGUS_BENCH_LOG_DIR"); dir != "" {
		// This process's agents (the sessions') in full; a child's many
		// agents only from warnings up: their disconnects and failed dials.
		name, level := "agents.log", slog.LevelDebug
		if f.SourceOffset != 0 {
			name, level = fmt.Sprintf("agents-%d.log", f.SourceOffset), slog.LevelWarn
		}
		if lf, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			quiet = slog.New(slog.NewJSONHandler(lf, &slog.HandlerOptions{Level: level}))
		}
	}
	for i, st := range states {
		cfg := agent.Config{
			StateDir: os.TempDir(), HeartbeatInterval: time.Hour, ReconnectMax: 10 * time.Second,
			LocalAddr: sourceAddr(f.SourceOffset + i%sources), CameraTimeout: time.Second,
			BrokerURLs: f.BrokerURLs,
		}
		a, err := agent.New(cfg, st, quiet)
		if err != nil {
			return nil, 0, err
		}
		a.DisableStatusFile()
		a.DisableKillSwitchWatch()
		events := make(chan agent.Event, 16)
		a.Notify(events)
		actx, cancel := context.WithCancel(ctx)
		ra := &runningAgent{state: st, cancel: cancel, done: make(chan struct{}), events: events}
		f.agents = append(f.agents, ra)
		sem <- struct{}{}
		wg.Add(1)
		t0 := time.Now()
		go func() {
			defer close(ra.done)
			_ = a.Run(actx)
		}()
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for {
				select {
				case ev := <-events:
					if ev.Kind == "connected" {
						lats[i] = time.Since(t0)
						return
					}
				case <-time.After(2 * time.Minute):
					failed.Add(1)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return lats, time.Since(start), fmt.Errorf("%d agents did not connect within 2 minutes", n)
	}
	return lats, time.Since(start), nil
}

// sourceAddr is the i-th loopback source address: 127.0.0.1, 127.0.0.2,
// ... then on into 127.0.1.x and beyond (all of 127/8 is loopback).
func sourceAddr(i int) string {
	i++
	return fmt.Sprintf("127.%d.%d.%d", i>>16&255, i>>8&255, i&255)
}

// Settle waits for the server's memory to settle after a change.
func Settle(d time.Duration) {
	runtime.GC()
	time.Sleep(d)
}
