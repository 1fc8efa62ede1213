package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"time"

	"github.com/argus-remote/argus/patch"
)

// transfer is a patch bundle arriving in chunks within one session.
type transfer struct {
	id, session string
	count, next int
	digest      string
	buf         bytes.Buffer
}

// AppliedPatch is one patch in the agent's record.
type AppliedPatch struct {
	ID        string       `json:"id"`
	Version   string       `json:"version"`
	Series    string       `json:"series"`
	Root      string       `json:"root"`
	Files     []patch.File `json:"files"`
	Digest    string       `json:"bundle_sha256"`
	AppliedAt time.Time    `json:"applied_at"`
}

const patchesFile = "patches.json"

// AppliedPatches reads the record of applied patches from the state dir.
func AppliedPatches(dir string) ([]AppliedPatch, error) {
	b, err := os.ReadFile(filepath.Join(dir, patchesFile))
	if errors.Is(err, fs.ErrNotExist) {
		return []AppliedPatch{}, nil
	}
	if err != nil {
		return nil, err
	}
	var out []AppliedPatch
	return out, json.Unmarshal(b, &out)
}

func savePatches(dir string, list []AppliedPatch) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, patchesFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, patchesFile))
}

// PatchResult is what apply_patch returns once the last chunk is in.
type PatchResult struct {
	Transfer string       `json:"transfer"`
	Received int          `json:"received"`
	Complete bool         `json:"complete"`
	ID       string       `json:"id,omitempty"`
	Version  string       `json:"version,omitempty"`
	Files    []patch.File `json:"files,omitempty"`
	Digest   string       `json:"bundle_sha256,omitempty"`
	Bytes    int          `json:"bytes,omitempty"`
}

// applyPatchChunk takes one chunk; with the last, it applies the patch.
func (a *Agent) applyPatchChunk(ctx context.Context, sessionID string, raw json.RawMessage) (any, error) {
	var args struct {
		Transfer string `json:"transfer"`
		Index    int    `json:"index"`
		Count    int    `json:"count"`
		SHA256   string `json:"sha256"`
		Data     string `json:"data"`
	}
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	chunk, err := base64.StdEncoding.DecodeString(args.Data)
	if err != nil || args.Transfer == "" || args.Count < 1 || args.Count > 64 || args.Index < 0 || args.Index >= args.Count {
		return nil, cmdErr("bad_arguments", "not a patch chunk")
	}
	a.mu.Lock()
	x := a.xfer
	if args.Index == 0 {
		x = &transfer{id: args.Transfer, session: sessionID, count: args.Count, digest: args.SHA256}
		a.xfer = x
	}
	switch {
	case x == nil || x.id != args.Transfer || x.session != sessionID:
		a.mu.Unlock()
		return nil, cmdErr("bad_arguments", "no such transfer in this session")
	case args.Index != x.next || args.Count != x.count:
		a.xfer = nil
		a.mu.Unlock()
		return nil, cmdErr("bad_arguments", "chunk %d arrived out of order", args.Index)
	case x.buf.Len()+len(chunk) > patch.MaxBundle:
		a.xfer = nil
		a.mu.Unlock()
		return nil, cmdErr(patch.CodeTooLarge, "the bundle is over %d bytes", patch.MaxBundle)
	}
	x.buf.Write(chunk)
	x.next++
	done := x.next == x.count
	if done {
		a.xfer = nil
	}
	a.mu.Unlock()
	if !done {
		return PatchResult{Transfer: x.id, Received: x.next}, nil
	}
	sum := sha256.Sum256(x.buf.Bytes())
	if hex.EncodeToString(sum[:]) != x.digest {
		return nil, cmdErr(patch.CodeDigestMismatch, "the bundle arrived damaged")
	}
	res, err := a.applyBundle(ctx, x.buf.Bytes())
	if err != nil {
		return nil, err
	}
	res.Transfer, res.Received, res.Complete = x.id, x.next, true
	return res, nil
}

func patchErr(err error) error {
	var pe *patch.Error
	if errors.As(err, &pe) {
		return &CommandError{Code: pe.Code, Message: pe.Message}
	}
	return err
}

// applyBundle verifies a bundle against the keys in the agent's own
// configuration and installs it: staged beside each target, swapped in by
// atomic rename, every touched file restored if anything fails, including
// the configured health check.
func (a *Agent) applyBundle(ctx context.Context, data []byte) (PatchResult, error) {
	m, files, err := patch.Open(data, a.cfg.PatchKeys, time.Now())
	if err != nil {
		return PatchResult{}, patchErr(err)
	}
	rootDir, ok := a.cfg.PatchRoots[m.Root]
	if !ok {
		return PatchResult{}, cmdErr(patch.CodePathNotAllowed, "no patch root named %q is configured", m.Root)
	}
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])

	a.patchMu.Lock()
	defer a.patchMu.Unlock()
	applied, err := AppliedPatches(a.cfg.StateDir)
	if err != nil {
		return PatchResult{}, cmdErr("patch_failed", "reading the applied-patch record: %v", err)
	}
	for _, p := range applied {
		if p.ID == m.ID {
			return PatchResult{}, cmdErr("patch_replayed", "patch %s was applied on %s", p.ID, p.AppliedAt.Format(time.RFC3339))
		}
		if p.Series == m.Series && !patch.Newer(m.Version, p.Version) {
			return PatchResult{}, cmdErr("patch_replayed", "version %s is not newer than %s, already applied in series %s", m.Version, p.Version, m.Series)
		}
	}

	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return PatchResult{}, cmdErr("patch_failed", "patch root %s: %v", m.Root, err)
	}
	defer root.Close()
	tx := &swap{root: root, tag: fmt.Sprintf("%d", time.Now().UnixNano())}
	if err := tx.apply(m, files); err != nil {
		tx.rollback()
		a.log.Error("patch rolled back", "id", m.ID, "err", err)
		return PatchResult{}, cmdErr("patch_rolled_back", "%v; every file was restored", err)
	}
	if len(a.cfg.PatchHealthCheck) > 0 {
		if err := a.healthCheck(ctx); err != nil {
			tx.rollback()
			a.log.Error("patch rolled back: health check failed", "id", m.ID, "err", err)
			return PatchResult{}, cmdErr("patch_rolled_back", "health check failed: %v; every file was restored", err)
		}
	}
	tx.commit()
	applied = append(applied, AppliedPatch{ID: m.ID, Version: m.Version, Series: m.Series, Root: m.Root, Files: m.Files, Digest: digest, AppliedAt: time.Now().UTC()})
	if err := savePatches(a.cfg.StateDir, applied); err != nil {
		a.log.Error("recording applied patch", "id", m.ID, "err", err)
	}
	a.log.Warn("PATCH APPLIED", "id", m.ID, "version", m.Version, "files", len(m.Files))
	return PatchResult{ID: m.ID, Version: m.Version, Files: m.Files, Digest: digest, Bytes: len(data)}, nil
}

func (a *Agent) healthCheck(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PatchHealthTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, a.cfg.PatchHealthCheck[0], a.cfg.PatchHealthCheck[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	// The check dies with the agent, like every child of it.
	if err := runChild(cmd); err != nil {
		out := buf.Bytes()
		if len(out) > 512 {
			out = out[len(out)-512:]
		}
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// swap installs files under a root and can undo every step it took.
type swap struct {
	root *os.Root
	tag  string
	// staged new files, and the targets swapped so far with their backups
	// ("" when the target did not exist).
	staged  []string
	swapped []swapped
}

type swapped struct{ target, backup string }

func sidecar(target, kind, tag string) string {
	dir, name := path.Split(target)
	return dir + "." + name + ".argus-" + kind + "-" + tag
}

func (s *swap) apply(m patch.Manifest, files map[string][]byte) error {
	// Stage everything first: a failure here has changed nothing.
	for _, f := range m.Files {
		if fi, err := s.root.Lstat(f.Target); err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("target %s exists and is not a regular file", f.Target)
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("target %s: %w", f.Target, err)
		}
		mode, _ := patch.ParseMode(f.Mode)
		tmp := sidecar(f.Target, "new", s.tag)
		fh, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(mode))
		if err != nil {
			return fmt.Errorf("staging %s: %w", f.Target, err)
		}
		s.staged = append(s.staged, tmp)
		_, werr := fh.Write(files[f.Target])
		if werr == nil {
			werr = fh.Chmod(fs.FileMode(mode)) // exact mode, whatever the umask
		}
		if werr == nil {
			werr = fh.Sync()
		}
		if cerr := fh.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("staging %s: %w", f.Target, werr)
		}
	}
	// Swap each in: the old file moves aside, the new one takes its name.
	for i, f := range m.Files {
		sw := swapped{target: f.Target}
		if _, err := s.root.Lstat(f.Target); err == nil {
			sw.backup = sidecar(f.Target, "old", s.tag)
			if err := s.root.Rename(f.Target, sw.backup); err != nil {
				return fmt.Errorf("backing up %s: %w", f.Target, err)
			}
		}
		s.swapped = append(s.swapped, sw)
		if err := s.root.Rename(s.staged[i], f.Target); err != nil {
			return fmt.Errorf("installing %s: %w", f.Target, err)
		}
	}
	return nil
}

// rollback restores every swapped target, newest first, and removes what
// was staged.
func (s *swap) rollback() {
	for i := len(s.swapped) - 1; i >= 0; i-- {
		sw := s.swapped[i]
		if sw.backup == "" {
			_ = s.root.Remove(sw.target)
			continue
		}
		_ = s.root.Rename(sw.backup, sw.target)
	}
	for _, p := range s.staged {
		_ = s.root.Remove(p)
	}
}

// commit removes the backups.
func (s *swap) commit() {
	for _, sw := range s.swapped {
		if sw.backup != "" {
			_ = s.root.Remove(sw.backup)
		}
	}
}
