package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/controlplane/operators"
	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/topics"
)

func TestWatchers_MonitorSeesPresenceViewerSeesOnlyItsTenant(t *testing.T) {
	s := newSupportEnv(t, nil)
	ctx := context.Background()
	_, monitorToken, err := operators.NewStore(s.srv.Database().Pool).Create(ctx, "grafana", operators.NewToken{Scopes: []operators.Scope{operators.ScopeMonitor}})
	require.NoError(t, err)
	_, noMonitor, err := operators.NewStore(s.srv.Database().Pool).Create(ctx, "nomon", operators.NewToken{Scopes: []operators.Scope{operators.ScopeAuditRead}})
	require.NoError(t, err)
	require.NoError(t, s.do(t, "POST", "/v1/tenants", map[string]string{"name": "beta"}, nil))
	var viewerA struct {
		Token    string `json:"token"`
		TenantID string `json:"tenant_id"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens", map[string]string{}, &viewerA))
	var beta struct {
		ID string `json:"id"`
	}
	require.NoError(t, s.do(t, "GET", "/v1/tenants/beta", nil, &beta))
	url := s.srv.MQTTURL()

	_, _, err = mqtttest.Dial(t, url, mqtttest.Options{ClientID: "monitor-1", Username: "monitor", Password: noMonitor})
	assert.Error(t, err, "an operator token without the monitor scope is refused")

	mon, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: "monitor-1", Username: "monitor", Password: monitorToken})
	require.NoError(t, err)
	_, err = mon.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topics.StatusFilter, QoS: 1}}})
	require.NoError(t, err)

	agentID, _, proc := s.runAgent(t, "cam-gw-1")
	awaitStatus := func(online bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case pk := <-mon.Received:
				var st topics.AgentStatusMsg
				if pk.Topic == "argus/v1/status/agents/"+agentID && json.Unmarshal(pk.Payload, &st) == nil && st.Online == online {
					return
				}
			case <-deadline:
				t.Fatalf("monitor did not see online=%v", online)
			}
		}
	}
	awaitStatus(true)
	proc.Stop()
	awaitStatus(false)

	// Monitors read; they never publish, nor read agent topics.
	resp, err := mon.Publish(ctx, &paho.Publish{Topic: topics.ServerStatus, QoS: 1, Payload: []byte("{}")})
	assert.True(t, err != nil || resp.ReasonCode >= 0x80, "monitor publish refused")
	sa, _ := mon.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "argus/v1/agents/+/heartbeat", QoS: 1}}})
	require.NotNil(t, sa)
	assert.GreaterOrEqual(t, sa.Reasons[0], byte(0x80))

	// A viewer of acme.
	_, _, err = mqtttest.Dial(t, url, mqtttest.Options{ClientID: "viewer-" + beta.ID + "-page", Username: "viewer:" + beta.ID, Password: viewerA.Token})
	assert.Error(t, err, "acme's token does not open beta")
	v, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: "viewer-" + viewerA.TenantID + "-page", Username: "viewer:" + viewerA.TenantID, Password: viewerA.Token})
	require.NoError(t, err)
	for _, filter := range []string{
		"argus/v1/status/tenants/" + beta.ID + "/#",
		"argus/v1/status/tenants/+/remote-support",
		topics.StatusFilter,
		"argus/v1/status/agents/" + agentID,
		"argus/v1/agents/" + agentID + "/activation",
		"$SYS/#",
	} {
		sa, _ := v.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		require.NotNil(t, sa, filter)
		assert.GreaterOrEqual(t, sa.Reasons[0], byte(0x80), "viewer may not subscribe to %s", filter)
	}
	resp, err = v.Publish(ctx, &paho.Publish{Topic: "argus/v1/status/tenants/" + viewerA.TenantID + "/remote-support", QoS: 1, Payload: []byte(`{"active":true}`)})
	assert.True(t, err != nil || resp.ReasonCode >= 0x80, "viewer publish refused")

	_, err = v.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "argus/v1/status/tenants/" + viewerA.TenantID + "/#", QoS: 1}}})
	require.NoError(t, err)
	select {
	case pk := <-v.Received:
		var st struct {
			TenantID string `json:"tenant_id"`
			Active   bool   `json:"active"`
		}
		require.NoError(t, json.Unmarshal(pk.Payload, &st))
		assert.Equal(t, viewerA.TenantID, st.TenantID)
		assert.False(t, st.Active)
	case <-time.After(5 * time.Second):
		t.Fatal("viewer got no indicator")
	}

	// Revoking the token ends the live connection, and it cannot return.
	var list struct {
		Tokens []struct {
			ID string `json:"id"`
		} `json:"viewer_tokens"`
	}
	require.NoError(t, s.do(t, "GET", "/v1/tenants/acme/viewer-tokens", nil, &list))
	require.Len(t, list.Tokens, 1)
	require.NoError(t, s.do(t, "POST", "/v1/tenants/acme/viewer-tokens/"+list.Tokens[0].ID+"/revoke", nil, nil))
	select {
	case <-v.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked viewer is still connected")
	}
	_, _, err = mqtttest.Dial(t, url, mqtttest.Options{ClientID: "viewer-" + viewerA.TenantID + "-page", Username: "viewer:" + viewerA.TenantID, Password: viewerA.Token})
	assert.Error(t, err, "a revoked viewer token cannot reconnect")
}
