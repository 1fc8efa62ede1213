// Package e2e runs the real binaries against each other: argus-server with
// its own PostgreSQL, argusctl, and (later) argus-agent.
package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/internal/mqtttest"
	"github.com/argus-remote/argus/internal/pgcluster"
	"github.com/argus-remote/argus/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestServe_PrivateClusterComesUpAndShutsDownClean(t *testing.T) {
	dataDir := testenv.TempDir(t)
	srv := testenv.StartServer(t, dataDir, nil)

	assert.Equal(t, 200, getStatus(t, srv.APIURL+"/readyz"))
	assert.Equal(t, 200, getStatus(t, srv.APIURL+"/healthz"))

	// Bootstrapping an operator works while the server runs.
	token, stderr, err := testenv.Run(t, nil, "argus-server", "operator", "create", "--data-dir", dataDir,
		"--name", "admin", "--scope", "operator:admin", "--scope", "agent:admin")
	require.NoError(t, err, stderr)
	require.Regexp(t, `^argus_pat_[a-z2-7]{16}_[0-9a-f]{64}$`, token, "the token, alone on stdout")

	out, stderr, err := testenv.Run(t, nil, "argusctl", "whoami", "--server", srv.APIURL, "--token", token, "-o", "json")
	require.NoError(t, err, stderr)
	var who struct {
		Operator string   `json:"operator"`
		Scopes   []string `json:"scopes"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &who), out)
	assert.Equal(t, "admin", who.Operator)
	assert.ElementsMatch(t, []string{"operator:admin", "agent:admin"}, who.Scopes)
	out, stderr, err = testenv.Run(t, nil, "argusctl", "operator", "list", "--server", srv.APIURL, "--token", token)
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "admin")

	// Deny by default: the broker admits nobody yet.
	_, ack, err := mqtttest.Dial(t, srv.MQTTURL, mqtttest.Options{ClientID: "x", Username: "x", Password: "y"})
	require.Error(t, err)
	require.NotNil(t, ack)
	assert.Equal(t, byte(0x86), ack.ReasonCode)

	pgDir := filepath.Join(dataDir, "postgres")
	pid := pgcluster.PID(pgDir)
	require.NotZero(t, pid, "the private cluster is running")

	srv.Stop(t)
	assert.Equal(t, 0, exitCode(srv.ExitErr()), "clean exit on SIGTERM\n%s", srv.Logs())
	assert.True(t, pgcluster.Exited(pid), "no PostgreSQL process left behind")
	assert.Zero(t, pgcluster.PID(pgDir), "postmaster.pid removed")

	// With the server down, bootstrap starts the cluster, and stops it again.
	second, stderr, err := testenv.Run(t, nil, "argus-server", "operator", "create", "--data-dir", dataDir,
		"--name", "auditor", "--scope", "audit:read")
	require.NoError(t, err, stderr)
	assert.Zero(t, pgcluster.PID(pgDir), "the command stopped the cluster it started")

	// Started again, the server reuses the cluster and its data.
	srv = testenv.StartServer(t, dataDir, nil)
	for _, tok := range []string{token, second} {
		_, stderr, err = testenv.Run(t, nil, "argusctl", "whoami", "--server", srv.APIURL, "--token", tok)
		assert.NoError(t, err, stderr)
	}
}

func TestSubcommands_RefuseADataDirWithoutAnArgusDatabase(t *testing.T) {
	parent := testenv.TempDir(t)
	empty := filepath.Join(parent, "empty")
	require.NoError(t, os.Mkdir(empty, 0o700))
	// A cluster, but no ARGUS database in it.
	noDB := filepath.Join(parent, "nodb")
	c, err := pgcluster.Start(context.Background(), pgcluster.Options{Dir: filepath.Join(noDB, "postgres"), Ephemeral: true})
	require.NoError(t, err)
	require.NoError(t, c.Stop(context.Background()))
	env := []string{"ARGUS_DATABASE_URL="}
	for _, dir := range []string{filepath.Join(parent, "typo"), empty, noDB} {
		for _, args := range [][]string{
			{"audit", "reconcile", "--since", "1h"},
			{"operator", "create", "--name", "admin", "--scope", "operator:admin"},
		} {
			out, stderr, err := testenv.Run(t, env, "argus-server", append(args, "--data-dir", dir)...)
			assert.Equal(t, 1, exitCode(err), "%v on %s: %s%s", args, dir, out, stderr)
			assert.Contains(t, stderr, "no ARGUS database in "+dir+": start `argus-server serve --data-dir "+dir+"` once, or set ARGUS_DATABASE_URL", "%v", args)
			assert.NotContains(t, out, "All clear")
			if dir != noDB {
				assert.NoDirExists(t, filepath.Join(dir, "postgres"), "%v created no cluster", args)
			}
		}
	}
	assert.Zero(t, pgcluster.PID(filepath.Join(noDB, "postgres")), "the cluster the commands started is stopped again")
	assert.NoDirExists(t, filepath.Join(parent, "typo"), "a mistyped data dir is not created")
}

func TestAudit_ReconcileOverAWindowWithNothingSaysSo(t *testing.T) {
	dataDir := testenv.TempDir(t)
	srv := testenv.StartServer(t, dataDir, nil)
	srv.Stop(t)
	out, stderr, err := testenv.Run(t, []string{"ARGUS_DATABASE_URL="}, "argus-server", "audit", "reconcile", "--data-dir", dataDir,
		"--from", "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "No audited actions in this window")
	assert.NotContains(t, out, "All clear")
}

func TestServe_UsesConfiguredDatabaseURL(t *testing.T) {
	dataDir := testenv.TempDir(t)
	srv := testenv.StartServer(t, dataDir, []string{"ARGUS_DATABASE_URL=" + testenv.EmptyDatabase(t)})
	assert.Equal(t, 200, getStatus(t, srv.APIURL+"/readyz"), "migrations applied to the configured database")
	_, err := os.Stat(filepath.Join(dataDir, "postgres"))
	assert.ErrorIs(t, err, os.ErrNotExist, "no private cluster when a URL is configured")
}

func TestServe_BadConfigurationFailsNamingTheKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"unknown key", nil, []string{"--config", write("unknown.yaml", "http-adress: 127.0.0.1:1\n")}, []string{`unknown key "http-adress"`}},
		{"unparsable file", nil, []string{"--config", write("broken.yaml", "http-addr: [\n")}, []string{"broken.yaml"}},
		{"invalid CIDR in env", []string{"REMOTE_SUPPORT_OPERATOR_CIDRS=10.0.0.0/33"}, nil,
			[]string{"remote-support-operator-cidrs", "REMOTE_SUPPORT_OPERATOR_CIDRS", "10.0.0.0/33"}},
		{"invalid CIDR in file", nil, []string{"--config", write("cidr.yaml", "remote-support-operator-cidrs: [10.1.0.0/16, nonsense]\n")},
			[]string{"remote-support-operator-cidrs", "nonsense"}},
		{"invalid CIDR in flag", nil, []string{"--remote-support-operator-cidrs", "300.0.0.0/8"}, []string{"remote-support-operator-cidrs"}},
		{"enabled without ops token", []string{"REMOTE_SUPPORT_ENABLED=true", "ARGUS_OPS_TOKEN="}, nil, []string{"ops-token", "ARGUS_OPS_TOKEN"}},
		{"bad listen address", []string{"ARGUS_HTTP_ADDR=nonsense"}, nil, []string{"http-addr", "ARGUS_HTTP_ADDR"}},
		{"drain timeout not a duration", []string{"ARGUS_CLUSTER_DRAIN_TIMEOUT=ten"}, nil,
			[]string{"cluster-drain-timeout", "ARGUS_CLUSTER_DRAIN_TIMEOUT", `"ten" is not a duration within 0..10m`}},
		{"drain timeout over its bound in file", nil, []string{"--config", write("drain.yaml", "cluster-drain-timeout: 11m\n")},
			[]string{"cluster-drain-timeout", `"11m" is not a duration within 0..10m`}},
		{"handover timeout negative in flag", nil, []string{"--cluster-drain-handover-timeout", "-1s"},
			[]string{"cluster-drain-handover-timeout", "ARGUS_CLUSTER_DRAIN_HANDOVER_TIMEOUT", `"-1s" is not a duration within 0..5m`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"serve", "--data-dir", filepath.Join(dir, "data")}, tc.args...)
			_, stderr, err := testenv.Run(t, tc.env, "argus-server", args...)
			assert.Equal(t, 1, exitCode(err), stderr)
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
			_, statErr := os.Stat(filepath.Join(dir, "data"))
			assert.ErrorIs(t, statErr, os.ErrNotExist, "nothing started before the configuration was checked")
		})
	}
}
