package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/pgcluster"
	"github.com/argus-remote/argus/internal/testenv"
)

// TestGameDay_DatabaseAndServerKilledUnderLoad kills PostgreSQL and then
// the server itself under concurrent command load, as an SRE's game day
// would. Afterwards no command is left without a final state, every
// command the agent ran had its requested action committed first, every
// command answered 200 is completed in both trails, every interrupted one
// says so in both trails, and the trails reconcile; the server served
// again after each kill with no hand restart.
func TestGameDay_DatabaseAndServerKilledUnderLoad(t *testing.T) {
	dataDir := testenv.TempDir(t)
	env := &testenv.Env{DataDir: dataDir}
	config := filepath.Join(t.TempDir(), "server.yaml")
	require.NoError(t, os.WriteFile(config, []byte("command-timeout: 3s\n"), 0o600))
	b := newBinaryFleet(t, env, "--config", config)
	dir, st := b.enroll(t, "cam-a")
	proc := testenv.StartAgent(t, dir)
	testenv.Eventually(t, 10*time.Second, func() bool { return b.agent(t, st.AgentID).Online }, "online")
	var act struct {
		Session apiclient.Session `json:"session"`
		Token   string            `json:"token"`
	}
	require.NoError(t, b.api.Do(context.Background(), "POST", "/v1/support/sessions",
		map[string]string{"tenant": "acme", "agent": st.AgentID, "reason": "game day"}, &act))

	var mu sync.Mutex
	base := b.srv.APIURL
	answered := map[string]bool{} // command ids answered 200
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				c := apiclient.Client{BaseURL: base, Token: b.token, OpsToken: opsToken, SessionToken: act.Token,
					HTTP: &http.Client{Timeout: 15 * time.Second}}
				mu.Unlock()
				var res apiclient.CommandResult
				err := c.Do(context.Background(), "POST", "/v1/support/sessions/"+act.Session.ID+"/commands", map[string]string{"name": "ping"}, &res)
				if err == nil {
					mu.Lock()
					answered[res.CommandID] = true
					mu.Unlock()
					continue
				}
				// Refused or unreachable: pace the loop while the fault lasts.
				var apiErr *apiclient.Error
				if !errors.As(err, &apiErr) {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	answeredCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(answered)
	}
	ready := func() bool {
		mu.Lock()
		u := base
		mu.Unlock()
		resp, err := http.Get(u + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}

	// PostgreSQL dies under load, and the server brings it back itself.
	testenv.Eventually(t, 10*time.Second, func() bool { return answeredCount() >= 20 }, "load running")
	pgDir := filepath.Join(dataDir, "postgres")
	require.NoError(t, syscall.Kill(pgcluster.PID(pgDir), syscall.SIGKILL))
	testenv.Eventually(t, 15*time.Second, ready, "ready again after PostgreSQL was killed")
	n := answeredCount()
	testenv.Eventually(t, 15*time.Second, func() bool { return answeredCount() >= n+20 }, "commands answered again")

	// The server dies under load, and comes back.
	require.NoError(t, b.srv.Cmd.Process.Signal(syscall.SIGKILL))
	<-b.srv.Done()
	b.restart(t)
	mu.Lock()
	base = b.srv.APIURL
	mu.Unlock()
	testenv.Eventually(t, 15*time.Second, ready, "ready after the restart")
	n = answeredCount()
	testenv.Eventually(t, 20*time.Second, func() bool { return answeredCount() >= n+20 }, "commands answered after the restart")
	close(stop)
	wg.Wait()

	ctx := context.Background()
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Dir: pgDir})
	require.NoError(t, err)
	pool, err := pgxpool.New(ctx, pg.ConnString("argus"))
	require.NoError(t, err)
	defer pool.Close()
	count := func(q string, args ...any) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, q, args...).Scan(&n))
		return n
	}

	// Every command ends with a final state: past its deadline, the check
	// marks what no one completed.
	testenv.Eventually(t, 30*time.Second, func() bool {
		return count("SELECT count(*) FROM commands WHERE status = 'requested'") == 0
	}, "no command left requested")

	// Every command the agent ran had its requested action committed.
	ran := regexp.MustCompile(`msg="running command" .*?command=ping id=([0-9a-f-]{36})`).FindAllStringSubmatch(proc.Logs(), -1)
	require.NotEmpty(t, ran)
	for _, m := range ran {
		assert.Equal(t, 1, count(`SELECT count(*) FROM commands c
			JOIN audit_log a ON a.action = 'support.command.requested' AND a.detail->>'command_id' = c.id::text
			JOIN events e ON e.id = a.id WHERE c.id = $1`, m[1]), "command %s the agent ran was requested on record", m[1])
	}
	// Every command answered 200 is completed in both trails.
	mu.Lock()
	for id := range answered {
		assert.Equal(t, 1, count(`SELECT count(*) FROM audit_log a JOIN events e ON e.id = a.id
			WHERE a.action = 'support.command.completed' AND a.detail->>'command_id' = $1`, id), "command %s answered 200 is completed", id)
	}
	mu.Unlock()
	// Every commands row has exactly one final action in both trails.
	assert.Zero(t, count(`SELECT count(*) FROM commands c WHERE 1 <> (SELECT count(*) FROM audit_log a JOIN events e ON e.id = a.id
		WHERE a.action IN ('support.command.completed', 'support.command.interrupted') AND a.detail->>'command_id' = c.id::text)`),
		"every command has one final action, in both trails")
	t.Logf("commands: %d answered 200, %d rows, %d interrupted", answeredCount(),
		count("SELECT count(*) FROM commands"), count("SELECT count(*) FROM commands WHERE status = 'interrupted'"))

	var rep struct {
		Clean      bool  `json:"clean"`
		Mismatches []any `json:"mismatches"`
	}
	require.NoError(t, b.api.Do(ctx, "POST", "/v1/audit/verify", map[string]string{"since": "1h"}, &rep))
	assert.True(t, rep.Clean, "%v", rep.Mismatches)
}
