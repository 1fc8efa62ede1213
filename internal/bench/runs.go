package bench

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/argus-remote/argus/argusctl/apiclient"
)

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// IdleResult is what the idle run measures.
type IdleResult struct {
	Agents         int       `json:"agents"`
	Sources        int       `json:"sources"`
	FDLimit        uint64    `json:"fd_limit"`
	ConnectRate    float64   `json:"connects_per_s"`
	Connect        Quantiles `json:"connect"`
	RSSBaselineMiB float64   `json:"rss_baseline_mib"`
	RSSMiB         float64   `json:"rss_mib"`
	RSSPerAgentKiB float64   `json:"rss_per_agent_kib"`
	// Settled is measured at the end of the hold, once the server's
	// runtime has run a garbage collection after the connections came in
	// (with no load, Go collects at least every two minutes) and returned
	// freed memory; zero if none ran during the hold.
	SettledRSSMiB         float64 `json:"settled_rss_mib,omitempty"`
	SettledRSSPerAgentKiB float64 `json:"settled_rss_per_agent_kib,omitempty"`
	SettledHeapInuseMiB   float64 `json:"settled_heap_inuse_mib,omitempty"`
	SettledStackInuseMiB  float64 `json:"settled_stack_inuse_mib,omitempty"`
	Goroutines            float64 `json:"goroutines"`
	HeapInuseMiB          float64 `json:"heap_inuse_mib"`
	HeldFor               string  `json:"held_for"`
	ConnectedAtEnd        float64 `json:"connected_at_end"`
	ReconnectAllIn        string  `json:"reconnect_all_in,omitempty"`
	ReconnectAgents       int     `json:"reconnect_agents,omitempty"`
}

// Idle connects n agents and measures the server holding them.
func Idle(ctx context.Context, bin string, n, sources int, hold time.Duration, reconnect bool) (IdleResult, error) {
	r := IdleResult{Agents: n, Sources: sources, FDLimit: RaiseFDLimit(), HeldFor: hold.String()}
	f, err := NewFleet(ctx, bin, nil)
	if err != nil {
		return r, err
	}
	defer f.Close()
	Settle(3 * time.Second)
	if err := f.Server.FreeOSMemory(); err != nil {
		return r, err
	}
	base, err := f.Server.RSS()
	if err != nil {
		return r, err
	}
	states, err := f.Enroll(ctx, n, 32)
	if err != nil {
		return r, fmt.Errorf("enroll: %w", err)
	}
	lats, total, err := f.Connect(ctx, states, sources, 512)
	if err != nil {
		return r, err
	}
	r.Connect = quantiles(lats)
	r.ConnectRate = float64(n) / total.Seconds()
	Settle(10 * time.Second)
	rss, err := f.Server.RSS()
	if err != nil {
		return r, err
	}
	r.RSSBaselineMiB, r.RSSMiB = float64(base)/(1<<20), float64(rss)/(1<<20)
	r.RSSPerAgentKiB = float64(rss-base) / float64(n) / 1024
	r.Goroutines, _ = f.Server.Metric("go_goroutines")
	heap, _ := f.Server.Metric("go_memstats_heap_inuse_bytes")
	r.HeapInuseMiB = heap / (1 << 20)
	gcs, _ := f.Server.Metric("go_gc_duration_seconds_count")
	if hold > 0 {
		time.Sleep(hold)
	}
	if after, _ := f.Server.Metric("go_gc_duration_seconds_count"); after > gcs {
		rss, err := f.Server.RSS()
		if err != nil {
			return r, err
		}
		r.SettledRSSMiB = float64(rss) / (1 << 20)
		r.SettledRSSPerAgentKiB = float64(rss-base) / float64(n) / 1024
		heap, _ := f.Server.Metric("go_memstats_heap_inuse_bytes")
		stack, _ := f.Server.Metric("go_memstats_stack_inuse_bytes")
		r.SettledHeapInuseMiB, r.SettledStackInuseMiB = heap/(1<<20), stack/(1<<20)
	}
	r.ConnectedAtEnd, _ = f.Server.Metric("argus_agents_connected")
	if reconnect {
		d, err := f.reconnect(ctx, n)
		if err != nil {
			return r, err
		}
		r.ReconnectAllIn, r.ReconnectAgents = d.Round(time.Millisecond).String(), n
	}
	return r, nil
}

// reconnect kills the server, starts it again on the same addresses and
// waits until every agent is back.
func (f *Fleet) reconnect(ctx context.Context, n int) (time.Duration, error) {
	f.Server.Kill()
	start := time.Now()
	if err := f.Server.Restart(ctx, f.Bin, f.Server.args...); err != nil {
		return 0, err
	}
	for {
		v, _ := f.Server.Metric("argus_agents_connected")
		if int(v) >= n {
			return time.Since(start), nil
		}
		if time.Since(start) > 5*time.Minute {
			return 0, fmt.Errorf("only %v of %d agents back after 5 minutes", v, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RTTResult is what the command runs measure.
type RTTResult struct {
	Sequential Quantiles `json:"sequential"`
	Window     int       `json:"window"`
	Throughput float64   `json:"commands_per_s"`
	Concurrent Quantiles `json:"concurrent"`
	Activate   Quantiles `json:"activate"`
}

// RTT measures audited ping round trips through the API and the gate,
// sequential and with window commands in flight, and activation latency.
func RTT(ctx context.Context, bin string, seq, window int, dur time.Duration, activations int) (RTTResult, error) {
	RaiseFDLimit()
	r := RTTResult{Window: window}
	f, err := NewFleet(ctx, bin, nil)
	if err != nil {
		return r, err
	}
	defer f.Close()
	states, err := f.Enroll(ctx, 1, 1)
	if err != nil {
		return r, err
	}
	if _, _, err := f.Connect(ctx, states, 1, 1); err != nil {
		return r, err
	}
	agentID := states[0].AgentID
	// Wait until the server sees it.
	for i := 0; i < 100; i++ {
		if v, _ := f.Server.Metric("argus_agents_connected"); v >= 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	var act []time.Duration
	for i := 0; i < activations; i++ {
		var res struct {
			Session apiclient.Session `json:"session"`
		}
		t0 := time.Now()
		if err := f.API.Do(ctx, "POST", "/v1/support/sessions", map[string]string{"tenant": "bench", "agent": agentID, "reason": "bench"}, &res); err != nil {
			return r, fmt.Errorf("activate: %w", err)
		}
		act = append(act, time.Since(t0))
		if err := f.API.Do(ctx, "POST", "/v1/support/sessions/"+res.Session.ID+"/deactivate", nil, nil); err != nil {
			return r, err
		}
	}
	r.Activate = quantiles(act)

	sess, err := f.openSession(ctx, agentID)
	if err != nil {
		return r, err
	}
	ping := func() (time.Duration, error) { return sess.ping(ctx) }
	if r.Sequential, err = f.pings(ctx, sess, seq); err != nil {
		return r, err
	}

	var mu sync.Mutex
	var conc []time.Duration
	var errs atomic.Int64
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < window; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				d, err := ping()
				if err != nil {
					errs.Add(1)
					continue
				}
				mu.Lock()
				conc = append(conc, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := errs.Load(); n > 0 {
		return r, fmt.Errorf("%d commands failed in the concurrent run", n)
	}
	r.Concurrent = quantiles(conc)
	r.Throughput = float64(len(conc)) / elapsed.Seconds()
	return r, nil
}
