package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/jpeg"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/agent"
	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/internal/testcert"
	"github.com/argus-remote/argus/internal/testenv"
	"github.com/argus-remote/argus/topics"
)

// hostFixture lays out what a tenant host offers: logs, a readable root
// with traps in it, and cameras.
type hostFixture struct {
	dir, root, config string
	configBody        []byte
}

func newHostFixture(t *testing.T) hostFixture {
	t.Helper()
	dir := t.TempDir()
	h := hostFixture{dir: dir, root: filepath.Join(dir, "root")}
	logs := filepath.Join(dir, "logs")
	require.NoError(t, os.MkdirAll(logs, 0o755))
	require.NoError(t, os.MkdirAll(h.root, 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "outside"), 0o755))

	var b strings.Builder
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	b.WriteString(strings.Repeat("x", 100<<10) + "\n") // a very long line
	b.WriteString("bad utf8: \xff\xfe end\n")          // invalid UTF-8
	b.WriteString("last line\n")
	require.NoError(t, os.WriteFile(filepath.Join(logs, "streamer.log"), []byte(b.String()), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(logs, "rotated.log.1"), []byte("old 1\nold 2\nold 3\nold 4\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(logs, "rotated.log"), []byte("new 1\nnew 2\n"), 0o644))

	h.configBody = []byte("stream:\n  bitrate: 4000\n")
	require.NoError(t, os.WriteFile(filepath.Join(h.root, "config.yaml"), h.configBody, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "outside", "secret.txt"), []byte("secret"), 0o644))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(h.root, "escape")))
	require.NoError(t, os.Symlink("../outside/secret.txt", filepath.Join(h.root, "escape-relative")))
	require.NoError(t, os.Symlink("config.yaml", filepath.Join(h.root, "inner")))
	// A second name, inside the root, for a file outside it; and a log
	// that is a symlink to that file.
	require.NoError(t, os.Link(filepath.Join(dir, "outside", "secret.txt"), filepath.Join(h.root, "hardlink")))
	require.NoError(t, os.Symlink(filepath.Join(dir, "outside", "secret.txt"), filepath.Join(logs, "linked.log")))
	require.NoError(t, syscall.Mkfifo(filepath.Join(h.root, "fifo"), 0o644))
	big, err := os.Create(filepath.Join(h.root, "big.bin"))
	require.NoError(t, err)
	require.NoError(t, big.Truncate(agent.MaxFileBytes+1))
	require.NoError(t, big.Close())

	// A camera source that accepts and then never says a word.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	h.config = filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(h.config, []byte(fmt.Sprintf(`log-files:
  streamer: %s
  rotated: %s
  linked: %s
readable-roots:
  - %s
cameras:
  test: testpattern:320x240
  synthetic: lavfi:testsrc=size=352x288:rate=1
  dead: http://%s/stream.mjpeg
camera-timeout: 2s
`, filepath.Join(logs, "streamer.log"), filepath.Join(logs, "rotated.log"), filepath.Join(logs, "linked.log"), h.root, ln.Addr())), 0o600))
	return h
}

// runConfiguredAgent is runAgent with a configuration file.
func (s *supportEnv) runConfiguredAgent(t *testing.T, name, config string, extraEnv ...string) (string, string, *testenv.AgentProcess) {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	require.NoError(t, s.do(t, "POST", "/v1/enrollment-tokens", map[string]string{"tenant": s.tenant, "name": name}, &tok))
	dir := filepath.Join(t.TempDir(), name)
	_, stderr, err := testenv.Run(t, nil, "argus-agent", "enroll", "--server", s.srv.APIURL(), "--token", tok.Token, "--state-dir", dir)
	require.NoError(t, err, stderr)
	st, err := agent.LoadState(dir)
	require.NoError(t, err)
	proc := testenv.StartAgent(t, dir, append([]string{"ARGUS_AGENT_CONFIG=" + config}, extraEnv...)...)
	proc.WaitLog(t, 0, "connected to broker", 1, 10*time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool { return s.online(st.AgentID) }, "agent online")
	return st.AgentID, dir, proc
}

func (s *supportEnv) run(t *testing.T, sess, token, name string, args any) apiclient.CommandResult {
	t.Helper()
	c := *s.api
	c.SessionToken = token
	var res apiclient.CommandResult
	require.NoError(t, c.Do(context.Background(), "POST", "/v1/support/sessions/"+sess+"/commands", map[string]any{"name": name, "args": args}, &res))
	return res
}

func code(r apiclient.CommandResult) string {
	if r.Error == nil {
		return r.Status
	}
	return r.Error.Code
}

func TestCommands_ThroughRealServerAndAgent(t *testing.T) {
	h := newHostFixture(t)
	s := newSupportEnv(t, nil)
	s.consentAndArm(t)
	agentID, _, _ := s.runConfiguredAgent(t, "cam-gw-1", h.config)
	sess, token := s.activate(t, agentID, "")
	run := func(name string, args any) apiclient.CommandResult { return s.run(t, sess.ID, token, name, args) }

	t.Run("tail_log", func(t *testing.T) {
		r := run("tail_log", map[string]any{"log": "streamer", "lines": 5})
		require.Equal(t, "ok", r.Status, "%+v", r.Error)
		var out agent.TailResult
		require.NoError(t, json.Unmarshal(r.Data, &out))
		require.Len(t, out.Lines, 5)
		assert.Equal(t, []string{"line 999", "line 1000"}, out.Lines[:2])
		assert.True(t, strings.HasSuffix(out.Lines[2], "…[line truncated]"), "a long line is cut, not dropped")
		assert.Equal(t, 1, out.TruncatedLines)
		assert.Equal(t, "bad utf8: \uFFFD end", out.Lines[3], "invalid UTF-8 is replaced and the JSON holds")
		assert.Equal(t, "last line", out.Lines[4])

		r = run("tail_log", map[string]any{"log": "rotated", "lines": 4})
		require.Equal(t, "ok", r.Status)
		require.NoError(t, json.Unmarshal(r.Data, &out))
		assert.Equal(t, []string{"old 3", "old 4", "new 1", "new 2"}, out.Lines, "a fresh log continues into its rotated predecessor")
		assert.True(t, out.RotatedIncluded)

		assert.Equal(t, "unknown_log", code(run("tail_log", map[string]any{"log": "/var/log/syslog"})), "a path is not a log name")
		r = run("tail_log", map[string]any{"log": "linked"})
		assert.Equal(t, "symlink_refused", code(r), "a log replaced by a symlink is not followed")
		assert.NotContains(t, string(r.Data), "secret")
		assert.Equal(t, "unknown_log", code(run("tail_log", map[string]any{})), "with two logs, one must be named")
		assert.Equal(t, "bad_arguments", code(run("tail_log", map[string]any{"log": "streamer", "lines": 5001})))
		assert.Equal(t, "bad_arguments", code(run("tail_log", map[string]any{"log": "streamer", "lines": 0})), "0 is outside 1..5000, not the default")
		assert.Equal(t, "bad_arguments", code(run("tail_log", map[string]any{"log": "streamer", "path": "/etc/shadow"})))
	})

	t.Run("read_file", func(t *testing.T) {
		r := run("read_file", map[string]string{"path": filepath.Join(h.root, "config.yaml")})
		require.Equal(t, "ok", r.Status, "%+v", r.Error)
		var f agent.FileResult
		require.NoError(t, json.Unmarshal(r.Data, &f))
		got, err := base64.StdEncoding.DecodeString(f.ContentBase64)
		require.NoError(t, err)
		assert.Equal(t, h.configBody, got)
		assert.Len(t, f.SHA256, 64)
		assert.Equal(t, "ok", run("read_file", map[string]string{"path": filepath.Join(h.root, "inner")}).Status, "a symlink inside the root is fine")

		for name, tc := range map[string]struct{ path, code string }{
			"dot-dot":          {h.root + "/../outside/secret.txt", "path_not_allowed"},
			"absolute outside": {"/etc/passwd", "path_not_allowed"},
			"symlink out":      {filepath.Join(h.root, "escape"), "path_not_allowed"},
			"relative symlink": {filepath.Join(h.root, "escape-relative"), "path_not_allowed"},
			"hard link out":    {filepath.Join(h.root, "hardlink"), "hard_link_refused"},
			"relative path":    {"config.yaml", "path_not_allowed"},
			"proc":             {"/proc/self/environ", "path_not_allowed"},
			"fifo":             {filepath.Join(h.root, "fifo"), "not_regular_file"},
			"directory":        {h.root, "not_regular_file"},
			"too large":        {filepath.Join(h.root, "big.bin"), "file_too_large"},
			"missing":          {filepath.Join(h.root, "nope"), "file_not_found"},
		} {
			t.Run(name, func(t *testing.T) {
				r := run("read_file", map[string]string{"path": tc.path})
				assert.Equal(t, tc.code, code(r), "%s", tc.path)
				if tc.code == "file_too_large" {
					assert.Contains(t, r.Error.Message, fmt.Sprint(agent.MaxFileBytes+1), "the size is given")
				}
			})
		}
	})

	t.Run("get_capabilities", func(t *testing.T) {
		r := run("get_capabilities", nil)
		require.Equal(t, "ok", r.Status, "%+v", r.Error)
		var c agent.Capabilities
		require.NoError(t, json.Unmarshal(r.Data, &c))
		assert.NotEmpty(t, c.Kernel)
		assert.Positive(t, c.CPUs)
		assert.Len(t, c.Cameras, 3)
		assert.Len(t, c.LogFiles, 3)
		assert.Equal(t, []string{h.root}, c.ReadableRoots)

		var a apiclient.Agent
		require.NoError(t, s.do(t, "GET", "/v1/agents/"+agentID, nil, &a))
		require.NotNil(t, a.CapabilitiesAt, "stored as the agent's newest capability data")
		assert.JSONEq(t, string(r.Data), string(a.Capabilities))
	})

	t.Run("get_capabilities lists ffmpeg's decoders", func(t *testing.T) {
		testenv.NeedTool(t, "ffmpeg", "ffmpeg")
		r := run("get_capabilities", nil)
		require.Equal(t, "ok", r.Status, "%+v", r.Error)
		var c agent.Capabilities
		require.NoError(t, json.Unmarshal(r.Data, &c))
		assert.Contains(t, c.Codecs, "mjpeg")
	})

	t.Run("camera_view", func(t *testing.T) {
		// The lavfi source and the source that never answers go through ffmpeg.
		testenv.NeedTool(t, "ffmpeg", "ffmpeg")
		for name, size := range map[string][2]int{"test": {320, 240}, "synthetic": {352, 288}} {
			r := run("camera_view", map[string]string{"camera": name})
			require.Equal(t, "ok", r.Status, "%s: %+v", name, r.Error)
			var fr agent.FrameResult
			require.NoError(t, json.Unmarshal(r.Data, &fr))
			raw, err := base64.StdEncoding.DecodeString(fr.JPEGBase64)
			require.NoError(t, err)
			img, err := jpeg.Decode(bytes.NewReader(raw))
			require.NoError(t, err, "a real JPEG")
			assert.Equal(t, size[0], img.Bounds().Dx(), name)
			assert.Equal(t, size[1], img.Bounds().Dy(), name)
			assert.Equal(t, size[0], fr.Width)
			assert.WithinDuration(t, time.Now(), fr.CapturedAt, time.Minute)
		}
		assert.Equal(t, "unknown_camera", code(run("camera_view", map[string]string{"camera": "rtsp://10.0.0.1/x"})))
		// A source that never answers times out, and holds up nothing else
		// meanwhile: a ping sent while it waits comes back first.
		dead := make(chan string, 1)
		go func() {
			c := *s.api
			c.SessionToken = token
			var res apiclient.CommandResult
			if err := c.Do(context.Background(), "POST", "/v1/support/sessions/"+sess.ID+"/commands",
				map[string]any{"name": "camera_view", "args": map[string]string{"camera": "dead"}}, &res); err != nil {
				dead <- err.Error()
				return
			}
			dead <- code(res)
		}()
		// The camera command is on its way to the agent once its row is
		// written (the row comes before the send).
		require.Eventually(t, func() bool {
			var n int
			_ = s.srv.Database().Pool.QueryRow(context.Background(),
				`SELECT count(*) FROM commands WHERE name = 'camera_view' AND status = 'requested'`).Scan(&n)
			return n == 1
		}, 10*time.Second, 5*time.Millisecond)
		require.Equal(t, "ok", run("ping", nil).Status)
		select {
		case c := <-dead:
			t.Fatalf("camera_view (%s) ended before the ping sent after it", c)
		default:
		}
		assert.Equal(t, "camera_timeout", <-dead, "a source that never answers")
	})

	t.Run("audited with arguments, sizes and digests", func(t *testing.T) {
		ctx := context.Background()
		pool := s.srv.Database().Pool
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'support.command.requested'
			AND detail->'args'->>'path' = $1`, filepath.Join(h.root, "config.yaml")).Scan(&n))
		assert.Equal(t, 1, n, "the path is in the request's audit")
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE action = 'support.command.completed'
			AND payload->'detail'->>'command' = 'read_file' AND (payload->'detail'->>'bytes')::int = $1 AND length(payload->'detail'->>'sha256') = 64`,
			len(h.configBody)).Scan(&n))
		assert.Equal(t, 2, n, "the completions' events (config.yaml, and it again through a symlink) hold the byte count and digest")
	})
}

func TestCommands_DormantAgentRefusesEach(t *testing.T) {
	h := newHostFixture(t)
	s := newSupportEnv(t, nil)
	agentID, _, _ := s.runConfiguredAgent(t, "cam-gw-1", h.config)
	id, _ := topics.ParseAgentID(agentID)
	cl, ok := s.srv.Broker().Server().Clients.Get(agentID)
	require.True(t, ok)
	for _, name := range []string{"tail_log", "read_file", "get_capabilities", "camera_view", "apply_patch"} {
		cmd := topics.CommandMsg{V: topics.Version, ID: uuid.NewString(), SessionID: uuid.NewString(), AgentID: agentID, Name: name,
			Args: json.RawMessage(`{}`), IssuedAt: time.Now().UTC(), ExpiresAt: time.Now().Add(time.Minute).UTC()}
		payload, err := topics.Sign(s.key, topics.PurposeCommand, cmd)
		require.NoError(t, err)
		require.NoError(t, cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: id.Topic(topics.Commands), Payload: payload}))
		testenv.Eventually(t, 5*time.Second, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, r := range s.res {
				if r.CommandID == cmd.ID {
					return r.Status == topics.ResultRefused && r.Error != nil && r.Error.Code == "agent_dormant"
				}
			}
			return false
		}, name+" refused by the dormant agent")
	}
}

// Over wss:// the agent verifies the broker against its CA file and runs
// commands as over ws://.
func TestCommands_OverTLS(t *testing.T) {
	cert, key := testcert.Files(t)
	s := newSupportEnv(t, map[string]any{"mqtt-tls-cert": cert, "mqtt-tls-key": key})
	require.True(t, strings.HasPrefix(s.srv.Broker().URL(), "wss://"), s.srv.Broker().URL())
	s.consentAndArm(t)
	agentID, _, _ := s.runAgent(t, "cam-gw-1", "ARGUS_AGENT_CA_FILE="+cert)
	sess, token := s.activate(t, agentID, "")
	res, err := s.command(t, sess.ID, token, "ping")
	require.NoError(t, err)
	assert.Equal(t, "ok", res.Status)
}
