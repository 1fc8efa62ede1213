package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/patch"
)

// treeOf lists every file under dir with its mode and digest.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", strings.TrimPrefix(p, dir), fi.Mode())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += " " + hex.EncodeToString(sum[:])
		}
		lines = append(lines, line)
		return nil
	}))
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

type patchHost struct {
	root, state string
	key         ed25519.PrivateKey
	cfg         Config
}

func newPatchHost(t *testing.T) patchHost {
	t.Helper()
	dir := t.TempDir()
	h := patchHost{root: filepath.Join(dir, "streamer"), state: filepath.Join(dir, "state")}
	require.NoError(t, os.MkdirAll(filepath.Join(h.root, "bin"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(h.root, "etc"), 0o755))
	require.NoError(t, os.MkdirAll(h.state, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(h.root, "bin", "run.sh"), []byte("#!/bin/sh\necho v1\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(h.root, "etc", "app.conf"), []byte("level=1\n"), 0o640))
	pub, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	h.key = key
	h.cfg = Config{StateDir: h.state, PatchKeys: []ed25519.PublicKey{pub}, PatchRoots: map[string]string{"streamer": h.root}}
	return h
}

// agent is a fresh agent on the host, as after a restart.
func (h patchHost) agent() *Agent {
	return &Agent{cfg: h.cfg, log: slog.New(slog.DiscardHandler)}
}

// bundle changes two files and adds a third.
func (h patchHost) bundle(t *testing.T, id, version string) []byte {
	t.Helper()
	b, err := patch.Build(patch.Manifest{ID: id, Version: version, Root: "streamer", Files: []patch.File{
		{Target: "bin/run.sh", Mode: "0755"}, {Target: "etc/app.conf", Mode: "0600"}, {Target: "etc/new.conf"},
	}}, map[string][]byte{"bin/run.sh": []byte("#!/bin/sh\necho v2\n"), "etc/app.conf": []byte("level=2\n"), "etc/new.conf": []byte("new\n")}, h.key)
	require.NoError(t, err)
	return b
}

func TestApplyBundle_FailsClosedWhenTheRecordCannotBeWritten(t *testing.T) {
	h := newPatchHost(t)
	before := treeOf(t, h.root)
	// The record's temporary file cannot be created: a directory holds
	// its name.
	require.NoError(t, os.Mkdir(filepath.Join(h.state, patchesFile+".tmp"), 0o700))
	_, err := h.agent().applyBundle(context.Background(), h.bundle(t, "HF-1", "1.1"))
	assert.Equal(t, "patch_rolled_back", codeOf(t, err), "a patch that cannot be recorded does not stay")
	assert.Equal(t, before, treeOf(t, h.root), "every file restored")
	_, err = os.Stat(filepath.Join(h.state, journalFile))
	assert.ErrorIs(t, err, fs.ErrNotExist, "no journal left")

	// Once the record can be written, the same bundle applies.
	require.NoError(t, os.Remove(filepath.Join(h.state, patchesFile+".tmp")))
	_, err = h.agent().applyBundle(context.Background(), h.bundle(t, "HF-1", "1.1"))
	require.NoError(t, err)
	applied, err := AppliedPatches(h.state)
	require.NoError(t, err)
	require.Len(t, applied, 1)
	assert.Equal(t, PatchApplied, applied[0].State)
}

// errCrash stands for the process dying at a fault point.
type errCrash string

func TestRecoverPatch_UndoesAnInterruptedPatchAtEveryPoint(t *testing.T) {
	for _, point := range []string{"staged", "swap:1", "swap:2", "swap:3", "recorded"} {
		t.Run(point, func(t *testing.T) {
			h := newPatchHost(t)
			before := treeOf(t, h.root)
			prev := testFault
			testFault = func(p string) {
				if p == point {
					panic(errCrash(p))
				}
			}
			func() {
				defer func() {
					assert.Equal(t, errCrash(point), recover(), "crashed at %s", point)
				}()
				_, _ = h.agent().applyBundle(context.Background(), h.bundle(t, "HF-1", "1.1"))
			}()
			testFault = prev
			_, err := os.Stat(filepath.Join(h.state, journalFile))
			require.NoError(t, err, "the intent is journalled before the tree is touched")

			a := h.agent()
			_, err = a.applyBundle(context.Background(), h.bundle(t, "HF-2", "1.2"))
			assert.Equal(t, "patch_failed", codeOf(t, err), "no patch over an unrecovered one")
			require.NoError(t, a.recoverPatch())
			_, err = os.Stat(filepath.Join(h.state, journalFile))
			assert.ErrorIs(t, err, fs.ErrNotExist, "the journal is gone once recovered")
			require.NoError(t, a.recoverPatch(), "nothing left to recover")
			record, err := PatchRecord(h.state)
			require.NoError(t, err)
			require.Len(t, record, 1)

			if point == "recorded" {
				// The record holds it: applied, only the backups go.
				assert.Equal(t, PatchApplied, record[0].State)
				got, err := os.ReadFile(filepath.Join(h.root, "etc", "app.conf"))
				require.NoError(t, err)
				assert.Equal(t, "level=2\n", string(got))
				assert.NotContains(t, treeOf(t, h.root), ".argus-", "no backup or staged copy left")
				return
			}
			assert.Equal(t, before, treeOf(t, h.root), "byte-identical to before the patch")
			assert.Equal(t, PatchRolledBack, record[0].State)
			assert.Equal(t, "HF-1", record[0].ID)
			assert.False(t, record[0].RolledBackAt.IsZero())
			applied, err := AppliedPatches(h.state)
			require.NoError(t, err)
			assert.Empty(t, applied, "nothing is in force")

			_, err = a.applyBundle(context.Background(), h.bundle(t, "HF-1", "1.1"))
			assert.Equal(t, "patch_replayed", codeOf(t, err), "the interrupted id stays refused")
			assert.Equal(t, before, treeOf(t, h.root))
			_, err = a.applyBundle(context.Background(), h.bundle(t, "HF-1b", "1.1"))
			require.NoError(t, err, "the same fix under a new id applies: a rolled-back version blocks nothing")
		})
	}
}
