package server_test

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/viper"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/settings"
	"github.com/argus-remote/argus/server"
)

func TestExampleConfigLoads(t *testing.T) {
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, filepath.Join("..", "configs", "server.yaml"), server.Keys))
	cfg, err := server.FromViper(v)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:8080", cfg.HTTPAddr)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}, cfg.OperatorCIDRs)
	assert.False(t, cfg.RemoteSupport)
	assert.Equal(t, uint64(64<<20), cfg.GCHeapFloor)
	assert.Equal(t, 10*time.Second, cfg.MQTTConnectTimeout)
	assert.Equal(t, 64, cfg.MQTTMaxPendingPerSource)
}

func TestMQTTConnectBounds(t *testing.T) {
	for env, values := range map[string]map[string]bool{
		"ARGUS_MQTT_CONNECT_TIMEOUT":        {"1s": true, "2m": true, "500ms": false, "6m": false, "ten": false},
		"ARGUS_MQTT_MAX_PENDING_PER_SOURCE": {"0": true, "1": true, "1024": true, "-1": false, "1048577": false},
	} {
		t.Run(env, func(t *testing.T) {
			for value, ok := range values {
				t.Setenv(env, value)
				v := viper.New()
				require.NoError(t, settings.Load(v, nil, "", server.Keys))
				_, err := server.FromViper(v)
				if ok {
					assert.NoError(t, err, "%s=%s", env, value)
				} else {
					assert.ErrorContains(t, err, env, "%s=%s", env, value)
				}
			}
		})
	}
}

func TestGCHeapFloorBounds(t *testing.T) {
	for value, ok := range map[string]bool{"0": true, "1048576": true, "-1": false, "68719476737": false} {
		t.Setenv("ARGUS_GC_HEAP_FLOOR", value)
		v := viper.New()
		require.NoError(t, settings.Load(v, nil, "", server.Keys))
		_, err := server.FromViper(v)
		if ok {
			assert.NoError(t, err, value)
		} else {
			assert.ErrorContains(t, err, "ARGUS_GC_HEAP_FLOOR", value)
		}
	}
}

func TestProductEnvironmentNames(t *testing.T) {
	t.Setenv("REMOTE_SUPPORT_ENABLED", "true")
	t.Setenv("REMOTE_SUPPORT_OPERATOR_CIDRS", "10.0.0.0/8,192.168.1.0/24")
	t.Setenv("ARGUS_OPS_TOKEN", "0123456789abcdef0123456789abcdef")
	t.Setenv("ARGUS_HTTP_ADDR", "127.0.0.1:9999")
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, "", server.Keys))
	cfg, err := server.FromViper(v)
	require.NoError(t, err)
	assert.True(t, cfg.RemoteSupport)
	assert.Len(t, cfg.OperatorCIDRs, 2)
	assert.Equal(t, "0123456789abcdef0123456789abcdef", cfg.OpsToken)
	assert.Equal(t, "127.0.0.1:9999", cfg.HTTPAddr)
}

func TestDefaultsAreLoopback(t *testing.T) {
	for _, k := range []string{"ARGUS_HTTP_ADDR", "ARGUS_MQTT_WS_ADDR", "REMOTE_SUPPORT_ENABLED"} {
		t.Setenv(k, "")
	}
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, "", server.Keys))
	cfg, err := server.FromViper(v)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:8080", cfg.HTTPAddr)
	assert.Equal(t, "127.0.0.1:8083", cfg.MQTTWSAddr)
	assert.Equal(t, "/mqtt", cfg.MQTTWSPath)
	assert.False(t, cfg.RemoteSupport, "remote support is off unless turned on")
}

func TestAuditStreamSettings(t *testing.T) {
	for _, c := range []struct {
		env map[string]string
		bad string // the variable the error names; "" when valid
	}{
		{map[string]string{}, ""},
		{map[string]string{"ARGUS_AUDIT_STREAM_ADDR": "siem.example.net:6514", "ARGUS_AUDIT_STREAM_TLS": "true", "ARGUS_AUDIT_STREAM_CA_FILE": "/etc/argus/ca.pem"}, ""},
		{map[string]string{"ARGUS_AUDIT_STREAM_ADDR": "siem.example.net"}, "ARGUS_AUDIT_STREAM_ADDR"},
		{map[string]string{"ARGUS_AUDIT_STREAM_ADDR": ":6514"}, "ARGUS_AUDIT_STREAM_ADDR"},
		{map[string]string{"ARGUS_AUDIT_STREAM_TLS": "maybe"}, "ARGUS_AUDIT_STREAM_TLS"},
		{map[string]string{"ARGUS_AUDIT_STREAM_CA_FILE": "/etc/argus/ca.pem"}, "ARGUS_AUDIT_STREAM_CA_FILE"},
		{map[string]string{"ARGUS_AUDIT_STREAM_MAX_LAG": "1s"}, "ARGUS_AUDIT_STREAM_MAX_LAG"},
		{map[string]string{"ARGUS_AUDIT_STREAM_MAX_LAG": "25h"}, "ARGUS_AUDIT_STREAM_MAX_LAG"},
		{map[string]string{"ARGUS_AUDIT_STREAM_MAX_MESSAGE": "1024"}, "ARGUS_AUDIT_STREAM_MAX_MESSAGE"},
		{map[string]string{"ARGUS_AUDIT_STREAM_MAX_MESSAGE": "2000000"}, "ARGUS_AUDIT_STREAM_MAX_MESSAGE"},
		{map[string]string{"ARGUS_AUDIT_STREAM_ADDR": "127.0.0.1:514"}, ""}, // the variables emptied above are unset
	} {
		for k, val := range c.env {
			t.Setenv(k, val)
		}
		v := viper.New()
		require.NoError(t, settings.Load(v, nil, "", server.Keys))
		cfg, err := server.FromViper(v)
		if c.bad == "" {
			require.NoError(t, err, "%v", c.env)
			assert.Equal(t, time.Minute, cfg.AuditStream.MaxLag)
			assert.Equal(t, 8192, cfg.AuditStream.MaxMessage)
			assert.Equal(t, c.env["ARGUS_AUDIT_STREAM_ADDR"], cfg.AuditStream.Addr)
			assert.Equal(t, cfg.NodeID, cfg.AuditStream.Hostname)
		} else {
			assert.ErrorContains(t, err, c.bad, "%v", c.env)
		}
		for k := range c.env {
			t.Setenv(k, "")
		}
	}
}

func TestCommandReconnectWait_LongerInACluster(t *testing.T) {
	load := func(env map[string]string) time.Duration {
		t.Helper()
		for k, val := range env {
			t.Setenv(k, val)
		}
		v := viper.New()
		require.NoError(t, settings.Load(v, nil, "", server.Keys))
		cfg, err := server.FromViper(v)
		require.NoError(t, err)
		return cfg.CommandReconnectWait
	}
	assert.Equal(t, 3*time.Second, load(nil), "alone")
	cluster := map[string]string{
		"ARGUS_DATABASE_URL":   "postgres://argus@127.0.0.1/argus",
		"ARGUS_CLUSTER_LISTEN": "127.0.0.1:7422",
		"ARGUS_CLUSTER_SECRET": "0123456789abcdef0123456789abcdef",
	}
	assert.Equal(t, 10*time.Second, load(cluster), "in a cluster an agent may be between nodes")
	cluster["ARGUS_COMMAND_RECONNECT_WAIT"] = "2s"
	assert.Equal(t, 2*time.Second, load(cluster), "set, it is kept")
}

func TestClusterDrainBounds(t *testing.T) {
	for env, values := range map[string]map[string]bool{
		"ARGUS_CLUSTER_DRAIN_TIMEOUT":          {"0s": true, "1s": true, "10m": true, "-1s": false, "11m": false, "ten": false},
		"ARGUS_CLUSTER_DRAIN_HANDOVER_TIMEOUT": {"0s": true, "500ms": true, "5m": true, "-1s": false, "6m": false, "soon": false},
	} {
		t.Run(env, func(t *testing.T) {
			for value, ok := range values {
				t.Setenv(env, value)
				v := viper.New()
				require.NoError(t, settings.Load(v, nil, "", server.Keys))
				cfg, err := server.FromViper(v)
				if !ok {
					assert.ErrorContains(t, err, env, "%s=%s", env, value)
					continue
				}
				require.NoError(t, err, "%s=%s", env, value)
				want, _ := time.ParseDuration(value)
				got := cfg.Cluster.DrainTimeout
				if env == "ARGUS_CLUSTER_DRAIN_HANDOVER_TIMEOUT" {
					got = cfg.Cluster.HandoverTimeout
				}
				assert.Equal(t, want, got, "%s=%s", env, value)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		v := viper.New()
		require.NoError(t, settings.Load(v, nil, "", server.Keys))
		cfg, err := server.FromViper(v)
		require.NoError(t, err)
		assert.Equal(t, 30*time.Second, cfg.Cluster.DrainTimeout)
		assert.Equal(t, 10*time.Second, cfg.Cluster.HandoverTimeout)
		assert.Equal(t, 2000, cfg.Cluster.DrainEvictRate)
	})
}

func TestClusterDrainEvictRateBounds(t *testing.T) {
	for value, want := range map[string]int{"0": 0, "1": 1, "2000": 2000, "1000000": 1_000_000, "-1": -1, "1000001": -1, "fast": -1, "1.5": -1} {
		t.Setenv("ARGUS_CLUSTER_DRAIN_EVICT_RATE", value)
		v := viper.New()
		require.NoError(t, settings.Load(v, nil, "", server.Keys))
		cfg, err := server.FromViper(v)
		if want < 0 {
			assert.ErrorContains(t, err, "ARGUS_CLUSTER_DRAIN_EVICT_RATE", "%s", value)
			continue
		}
		require.NoError(t, err, value)
		assert.Equal(t, want, cfg.Cluster.DrainEvictRate, value)
	}
}

func TestClusterStatusResyncBounds(t *testing.T) {
	for value, ok := range map[string]bool{"1s": true, "30s": true, "10m": true, "500ms": false, "11m": false, "often": false} {
		t.Setenv("ARGUS_CLUSTER_STATUS_RESYNC", value)
		v := viper.New()
		require.NoError(t, settings.Load(v, nil, "", server.Keys))
		cfg, err := server.FromViper(v)
		if !ok {
			assert.ErrorContains(t, err, "ARGUS_CLUSTER_STATUS_RESYNC", value)
			continue
		}
		require.NoError(t, err, value)
		want, _ := time.ParseDuration(value)
		assert.Equal(t, want, cfg.Cluster.StatusResync, value)
	}
}
