package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/argus-remote/argus/broker"
	"github.com/argus-remote/argus/topics"
)

// BareIdle is the memory of a broker holding bare idle clients.
type BareIdle struct {
	Broker         string  `json:"broker"`
	Clients        int     `json:"clients"`
	ConnectRate    float64 `json:"connects_per_s"`
	RSSPerConnKiB  float64 `json:"rss_per_connection_kib"`
	RSSMiB         float64 `json:"rss_mib"`
	RSSBaselineMiB float64 `json:"rss_baseline_mib"`
}

// IdleAgainst measures bare idle clients on the argus server (with
// enrolled agents' credentials) and on Mosquitto, the same way.
func IdleAgainst(ctx context.Context, bin string, n, sources int) ([]BareIdle, error) {
	RaiseFDLimit()
	var out []BareIdle

	f, err := NewFleet(ctx, bin, nil)
	if err != nil {
		return nil, err
	}
	states, err := f.Enroll(ctx, n, 32)
	if err != nil {
		f.Close()
		return nil, err
	}
	Settle(3 * time.Second)
	if err := f.Server.FreeOSMemory(); err != nil {
		f.Close()
		return nil, err
	}
	base, _ := f.Server.RSS()
	clients, rate, err := IdleRaw(ctx, f.Server.MQTTURL, n, sources, func(i int) (string, string, string, string) {
		id, _ := topics.ParseAgentID(states[i].AgentID)
		return states[i].AgentID, states[i].AgentID, states[i].Secret, id.Topic(topics.Activation)
	})
	if err != nil {
		CloseRaw(clients)
		f.Close()
		return nil, err
	}
	Settle(10 * time.Second)
	rss, _ := f.Server.RSS()
	out = append(out, BareIdle{Broker: "argus-server (mochi, WebSocket)", Clients: n, ConnectRate: rate,
		RSSPerConnKiB: float64(rss-base) / float64(n) / 1024, RSSMiB: float64(rss) / (1 << 20), RSSBaselineMiB: float64(base) / (1 << 20)})
	CloseRaw(clients)
	f.Close()

	m, err := StartMosquitto(ctx)
	if err != nil {
		return out, err
	}
	defer m.Stop()
	Settle(time.Second)
	base, _ = m.RSS()
	clients, rate, err = IdleRaw(ctx, m.URL, n, sources, func(i int) (string, string, string, string) {
		return fmt.Sprintf("m%06d", i), "", "", fmt.Sprintf("bench/%06d/activation", i)
	})
	defer CloseRaw(clients)
	if err != nil {
		return out, err
	}
	Settle(10 * time.Second)
	rss, _ = m.RSS()
	out = append(out, BareIdle{Broker: "mosquitto 2.0.11 (Debian, TCP)", Clients: n, ConnectRate: rate,
		RSSPerConnKiB: float64(rss-base) / float64(n) / 1024, RSSMiB: float64(rss) / (1 << 20), RSSBaselineMiB: float64(base) / (1 << 20)})
	return out, nil
}

type allowAll struct{}

func (allowAll) Authenticate(broker.ConnectRequest) bool { return true }
func (allowAll) Allow(_, _, _ string, _ bool) bool       { return true }

// EchoAgainst measures bare MQTT request/response on a broker configured
// as argus-server configures its own (in this process, no auth) and on
// Mosquitto.
func EchoAgainst(ctx context.Context, k int) (map[string]Quantiles, error) {
	out := map[string]Quantiles{}
	b, err := broker.New(broker.Config{WSAddr: "127.0.0.1:0", Policy: allowAll{}})
	if err != nil {
		return nil, err
	}
	if err := b.Start(); err != nil {
		return nil, err
	}
	defer b.Close()
	roles := func(role string) (string, string, string, string, string) {
		return "echo-" + role, "", "", "bench/echo/req", "bench/echo/resp"
	}
	q, err := Echo(ctx, b.URL(), k, roles)
	if err != nil {
		return nil, fmt.Errorf("argus broker: %w", err)
	}
	out["argus broker (mochi, WebSocket)"] = q
	m, err := StartMosquitto(ctx)
	if err != nil {
		return out, err
	}
	defer m.Stop()
	q, err = Echo(ctx, m.URL, k, roles)
	if err != nil {
		return out, fmt.Errorf("mosquitto: %w", err)
	}
	out["mosquitto 2.0.11 (Debian, TCP)"] = q
	return out, nil
}
