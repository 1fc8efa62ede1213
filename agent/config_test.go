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
