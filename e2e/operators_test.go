package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/testenv"
)

type cliToken struct {
	ID        string     `json:"id"`
	Token     string     `json:"token"`
	ExpiresAt *time.Time `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
}

// dialMonitor connects a monitor with token and subscribes to the status
// tree, so the connection is known to be up and reading.
func dialMonitor(t *testing.T, url, clientID, token string) *mqtttest.Client {
	t.Helper()
	mon, _, err := mqtttest.Dial(t, url, mqtttest.Options{ClientID: clientID, Username: "monitor", Password: token})
	require.NoError(t, err, "monitor %s connects", clientID)
	_, err = mon.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "argus/v1/status/#"}}})
	require.NoError(t, err)
	return mon
}

func connected(c *mqtttest.Client) bool {
	select {
	case <-c.Done():
		return false
	default:
		return true
	}
}

func TestOperatorTokens_CreateListRevokeDisableThroughArgusctl(t *testing.T) {
	env := testenv.NewEnv(t)
	admin := env.Operator(t, "admin", "operator:admin", "audit:read")
	bobFirst := env.Operator(t, "bob", "monitor")
	srv := env.StartServer(t, nil)

	// An operator that exists gets no second `operator create`, and is told
	// how to get another token; the recovery command gives one.
	_, stderr, err := testenv.Run(t, env.Vars(), "argus-server", "operator", "create", "--name", "bob", "--scope", "monitor")
	require.Error(t, err)
	assert.Contains(t, stderr, "argus-server operator token create --name bob")
	recovered, stderr, err := testenv.Run(t, env.Vars(), "argus-server", "operator", "token", "create", "--name", "bob", "--scope", "audit:read", "--expires-in", "24h")
	require.NoError(t, err, stderr)
	recovered = strings.TrimSpace(recovered)
	_, _, err = testenv.CLI(t, srv.APIURL, recovered, "whoami")
	require.NoError(t, err, "the recovered token works")

	// A monitor token minted through argusctl, with an expiry.
	var tok cliToken
	testenv.CLIJSON(t, srv.APIURL, admin, &tok, "operator", "token", "create", "bob", "--scope", "monitor", "--expires-in", "1h", "--description", "grafana")
	require.NotEmpty(t, tok.Token)
	require.NotNil(t, tok.ExpiresAt)
	assert.WithinDuration(t, time.Now().Add(time.Hour), *tok.ExpiresAt, time.Minute)
	_, _, err = testenv.CLI(t, srv.APIURL, tok.Token, "whoami")
	require.NoError(t, err)

	var list struct {
		Tokens []cliToken `json:"tokens"`
	}
	testenv.CLIJSON(t, srv.APIURL, admin, &list, "operator", "token", "list", "bob")
	require.Len(t, list.Tokens, 3)
	out, _, err := testenv.CLI(t, srv.APIURL, admin, "operator", "token", "list", "bob")
	require.NoError(t, err)
	assert.Contains(t, out, tok.ID)
	assert.NotContains(t, out, tok.Token, "a listing never shows a secret")

	mon := dialMonitor(t, srv.MQTTURL, "monitor-x", tok.Token)
	other := dialMonitor(t, srv.MQTTURL, "monitor-y", bobFirst)

	// Revoked: the next request is refused, and the monitor connected with
	// it is dropped within a second; the one with another token is not.
	_, stderr, err = testenv.CLI(t, srv.APIURL, admin, "operator", "token", "revoke", "bob", tok.ID)
	require.NoError(t, err, stderr)
	revoked := time.Now()
	_, stderr, err = testenv.CLI(t, srv.APIURL, tok.Token, "whoami")
	require.Error(t, err)
	assert.Contains(t, stderr, "token_revoked")
	select {
	case <-mon.Done():
		t.Logf("monitor dropped %s after the revocation returned", time.Since(revoked))
	case <-time.After(time.Second - time.Since(revoked)):
		t.Fatal("the monitor connected with the revoked token is still connected a second later")
	}
	_, _, err = mqtttest.Dial(t, srv.MQTTURL, mqtttest.Options{ClientID: "monitor-x", Username: "monitor", Password: tok.Token})
	assert.Error(t, err, "and cannot come back")
	assert.True(t, connected(other), "a monitor with another token stays")

	// Disabled: every token of the operator is refused, its monitors dropped.
	_, stderr, err = testenv.CLI(t, srv.APIURL, admin, "operator", "disable", "bob")
	require.NoError(t, err, stderr)
	disabled := time.Now()
	for _, tk := range []string{bobFirst, recovered} {
		_, stderr, err = testenv.CLI(t, srv.APIURL, tk, "whoami")
		require.Error(t, err)
		assert.Contains(t, stderr, "operator_disabled")
	}
	select {
	case <-other.Done():
	case <-time.After(time.Second - time.Since(disabled)):
		t.Fatal("the disabled operator's monitor is still connected a second later")
	}
	_, stderr, err = testenv.CLI(t, srv.APIURL, admin, "operator", "enable", "bob")
	require.NoError(t, err, stderr)
	_, _, err = testenv.CLI(t, srv.APIURL, bobFirst, "whoami")
	assert.NoError(t, err, "enabled again, its live tokens work")

	// Each action is in the audit, with its detail.
	var audit struct {
		Entries []struct {
			Actor  string         `json:"actor"`
			Action string         `json:"action"`
			Detail map[string]any `json:"detail"`
		} `json:"entries"`
	}
	testenv.CLIJSON(t, srv.APIURL, admin, &audit, "audit", "list", "--since", "1h")
	seen := map[string]int{}
	for _, e := range audit.Entries {
		seen[e.Action]++
		if e.Action == "operator.token.revoke" {
			assert.Equal(t, tok.ID, e.Detail["token_id"])
			assert.Equal(t, "operator:admin", e.Actor)
		}
		if e.Action == "operator.token.create" && e.Actor == "system" {
			assert.Equal(t, "argus-server operator token create", e.Detail["via"])
		}
	}
	assert.Equal(t, 2, seen["operator.token.create"], "the recovery and the argusctl mint")
	for _, a := range []string{"operator.token.revoke", "operator.disable", "operator.enable"} {
		assert.Equal(t, 1, seen[a], a)
	}
	out, stderr, err = testenv.CLI(t, srv.APIURL, admin, "audit", "verify", "--since", "1h")
	assert.NoError(t, err, "both trails reconcile: %s%s", out, stderr)
}

func TestMonitor_DisconnectedWhenItsTokenExpires(t *testing.T) {
	env := testenv.NewEnv(t)
	admin := env.Operator(t, "admin", "operator:admin")
	env.Operator(t, "grafana", "monitor")
	srv := env.StartServer(t, nil)

	var tok cliToken
	testenv.CLIJSON(t, srv.APIURL, admin, &tok, "operator", "token", "create", "grafana", "--scope", "monitor", "--expires-in", "3s")
	require.NotNil(t, tok.ExpiresAt)
	mon := dialMonitor(t, srv.MQTTURL, "monitor-x", tok.Token)

	select {
	case <-mon.Done():
		t.Fatalf("dropped before its token expired (%s early)", time.Until(*tok.ExpiresAt))
	case <-time.After(time.Until(*tok.ExpiresAt) - 500*time.Millisecond):
	}
	select {
	case <-mon.Done():
		late := time.Since(*tok.ExpiresAt)
		t.Logf("dropped %s after expiry", late)
		assert.Less(t, late, time.Second)
	case <-time.After(time.Until(*tok.ExpiresAt) + time.Second):
		t.Fatal("the monitor is still connected a second after its token expired")
	}
	_, _, err := mqtttest.Dial(t, srv.MQTTURL, mqtttest.Options{ClientID: "monitor-x", Username: "monitor", Password: tok.Token})
	assert.Error(t, err, "an expired token cannot connect again")
}

// A token revoked by hand in the database (or by another server) drops
// its monitor too: the periodic check reads the token cache, which
// LISTEN/NOTIFY keeps fresh.
func TestMonitor_DroppedWhenItsTokenIsRevokedInTheDatabase(t *testing.T) {
	env := testenv.NewEnv(t)
	admin := env.Operator(t, "admin", "operator:admin")
	env.Operator(t, "grafana", "monitor")
	srv := env.StartServer(t, nil)
	var tok cliToken
	testenv.CLIJSON(t, srv.APIURL, admin, &tok, "operator", "token", "create", "grafana", "--scope", "monitor")
	mon := dialMonitor(t, srv.MQTTURL, "monitor-x", tok.Token)

	conn, err := pgx.Connect(t.Context(), env.DatabaseURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(t.Context(), "UPDATE operator_tokens SET revoked_at = now() WHERE id = $1", tok.ID)
	require.NoError(t, err)
	revoked := time.Now()
	select {
	case <-mon.Done():
		t.Logf("dropped %s after the UPDATE", time.Since(revoked))
	case <-time.After(time.Second):
		t.Fatal("the monitor is still connected a second after its token was revoked in the database")
	}
}
