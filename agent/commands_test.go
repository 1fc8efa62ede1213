package agent

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// codeOf is the stable code of a command error ("" for none).
func codeOf(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var ce *CommandError
	require.True(t, errors.As(err, &ce), "not a CommandError: %v", err)
	return ce.Code
}

func args(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// linkHost lays out logs and a readable root next to a file neither
// should hand out ("outside/secret.txt", standing in for a root-only
// file), with symlinks and hard links pointing at it.
type linkHost struct {
	a                 *Agent
	logs, root, outer string
}

func newLinkHost(t *testing.T) linkHost {
	t.Helper()
	dir := t.TempDir()
	h := linkHost{logs: filepath.Join(dir, "logs"), root: filepath.Join(dir, "root"), outer: filepath.Join(dir, "outside", "secret.txt")}
	for _, d := range []string{h.logs, h.root, filepath.Dir(h.outer)} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	require.NoError(t, os.WriteFile(h.outer, []byte("root:secret\n"), 0o600))

	write := func(p, s string) { require.NoError(t, os.WriteFile(p, []byte(s), 0o644)) }
	write(filepath.Join(h.logs, "plain.log"), "p1\np2\n")
	write(filepath.Join(h.logs, "plain.log.1"), "p0\n")
	require.NoError(t, os.Symlink(h.outer, filepath.Join(h.logs, "symlinked.log")))
	require.NoError(t, os.Link(h.outer, filepath.Join(h.logs, "hardlinked.log")))
	// A fresh log whose rotated predecessor is a symlink out.
	write(filepath.Join(h.logs, "rotated.log"), "new\n")
	require.NoError(t, os.Symlink(h.outer, filepath.Join(h.logs, "rotated.log.1")))
	write(filepath.Join(h.logs, "rotlinked.log"), "new\n")
	require.NoError(t, os.Link(h.outer, filepath.Join(h.logs, "rotlinked.log.1")))

	write(filepath.Join(h.root, "config.yaml"), "a: 1\n")
	require.NoError(t, os.Symlink("config.yaml", filepath.Join(h.root, "inner")))
	require.NoError(t, os.Link(h.outer, filepath.Join(h.root, "hardlink")))

	logs := map[string]string{}
	for _, n := range []string{"plain", "symlinked", "hardlinked", "rotated", "rotlinked"} {
		logs[n] = filepath.Join(h.logs, n+".log")
	}
	h.a = &Agent{cfg: Config{LogFiles: logs, ReadableRoots: []string{h.root}}, log: slog.New(slog.DiscardHandler)}
	return h
}

func TestTailLog_RefusesSymlinksAndHardLinks(t *testing.T) {
	h := newLinkHost(t)
	res, err := h.a.tailLog(args(t, map[string]any{"log": "plain", "lines": 10}))
	require.NoError(t, err)
	assert.Equal(t, []string{"p0", "p1", "p2"}, res.(TailResult).Lines, "an ordinary log and its predecessor still work")

	for name, want := range map[string]string{
		"symlinked":  "symlink_refused",
		"hardlinked": "hard_link_refused",
		"rotated":    "symlink_refused",
		"rotlinked":  "hard_link_refused",
	} {
		t.Run(name, func(t *testing.T) {
			res, err := h.a.tailLog(args(t, map[string]any{"log": name, "lines": 10}))
			assert.Equal(t, want, codeOf(t, err), "result: %+v", res)
			if err != nil {
				assert.NotContains(t, err.Error(), "root:secret")
			}
		})
	}
}

func TestReadFile_RefusesHardLinksToFilesOutsideTheRoot(t *testing.T) {
	h := newLinkHost(t)
	res, err := h.a.readFile(args(t, map[string]string{"path": filepath.Join(h.root, "hardlink")}))
	assert.Equal(t, "hard_link_refused", codeOf(t, err), "result: %+v", res)

	for _, p := range []string{"config.yaml", "inner"} {
		res, err := h.a.readFile(args(t, map[string]string{"path": filepath.Join(h.root, p)}))
		require.NoError(t, err, p)
		got, _ := base64.StdEncoding.DecodeString(res.(FileResult).ContentBase64)
		assert.Equal(t, "a: 1\n", string(got), "ordinary files and inner symlinks still work")
	}
}

// tail_log takes lines 1..5000 as its error says: an explicit 0 is
// refused like a negative count, and only a missing count means 200.
func TestTailLog_LinesOutsideTheRangeAreRefused(t *testing.T) {
	h := newLinkHost(t)
	for _, n := range []int{0, -1, 5001} {
		_, err := h.a.tailLog(args(t, map[string]any{"log": "plain", "lines": n}))
		assert.Equal(t, "bad_arguments", codeOf(t, err), "lines %d", n)
		if err != nil {
			assert.Contains(t, err.Error(), "lines must be 1..5000")
		}
	}
	res, err := h.a.tailLog(args(t, map[string]any{"log": "plain"}))
	require.NoError(t, err, "no count is the default")
	assert.Equal(t, []string{"p0", "p1", "p2"}, res.(TailResult).Lines)
	res, err = h.a.tailLog(args(t, map[string]any{"log": "plain", "lines": 1}))
	require.NoError(t, err)
	assert.Equal(t, []string{"p2"}, res.(TailResult).Lines)
}
