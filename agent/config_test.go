package agent_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/viper"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/internal/settings"
)

func TestExampleConfigLoads(t *testing.T) {
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, filepath.Join("..", "configs", "agent.yaml"), agent.Keys))
	cfg, err := agent.ConfigFromViper(v)
	require.NoError(t, err)
	assert.Equal(t, 30*time.Second, cfg.HeartbeatInterval)
}

func TestConfig_BadHeartbeatNamed(t *testing.T) {
	t.Setenv("ARGUS_AGENT_HEARTBEAT_INTERVAL", "0.1s")
	v := viper.New()
	require.NoError(t, settings.Load(v, nil, "", agent.Keys))
	_, err := agent.ConfigFromViper(v)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ARGUS_AGENT_HEARTBEAT_INTERVAL")
}

func TestConfig_ReadableRootsMayNotHoldSecretsOrKernelTrees(t *testing.T) {
	for name, tc := range map[string]struct{ state, root string }{
		"root holds the state dir": {"/var/lib/argus-agent", "/var/lib"},
		"the whole filesystem":     {"/var/lib/argus-agent", "/"},
		"proc":                     {"/var/lib/argus-agent", "/proc"},
		"below sys":                {"/var/lib/argus-agent", "/sys/class"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("ARGUS_AGENT_STATE_DIR", tc.state)
			v := viper.New()
			require.NoError(t, settings.Load(v, nil, "", agent.Keys))
			v.Set("readable-roots", []any{tc.root})
			_, err := agent.ConfigFromViper(v)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "readable-roots")
		})
	}
}
