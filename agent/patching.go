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
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"syscall"
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

// AppliedPatch is one patch in the agent's record: applied, or an attempt
// that a crash interrupted and the agent rolled back at start-up. Both
// keep their id refused (patch_replayed).
type AppliedPatch struct {
	ID        string       `json:"id"`
	Version   string       `json:"version"`
	Series    string       `json:"series"`
	Root      string       `json:"root"`
	Files     []patch.File `json:"files"`
	Digest    string       `json:"bundle_sha256"`
	AppliedAt time.Time    `json:"applied_at,omitzero"`
	// State is PatchApplied (also when empty, as in records written
	// before it existed) or PatchRolledBack.
	State        string    `json:"state,omitempty"`
	StartedAt    time.Time `json:"started_at,omitzero"`
	RolledBackAt time.Time `json:"rolled_back_at,omitzero"`
}

// Patch record states.
const (
	PatchApplied    = "applied"
	PatchRolledBack = "rolled_back"
)

func (p AppliedPatch) applied() bool { return p.State == "" || p.State == PatchApplied }

const patchesFile = "patches.json"

// PatchRecord reads the whole record of patches from the state dir:
// applied ones and interrupted attempts rolled back at start-up.
func PatchRecord(dir string) ([]AppliedPatch, error) {
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

// AppliedPatches reads the patches in force from the state dir.
func AppliedPatches(dir string) ([]AppliedPatch, error) {
	return recordWhere(dir, AppliedPatch.applied)
}

// RolledBackPatches reads the interrupted attempts rolled back at start-up.
func RolledBackPatches(dir string) ([]AppliedPatch, error) {
	return recordWhere(dir, func(p AppliedPatch) bool { return !p.applied() })
}

func recordWhere(dir string, keep func(AppliedPatch) bool) ([]AppliedPatch, error) {
	all, err := PatchRecord(dir)
	if err != nil {
		return nil, err
	}
	out := []AppliedPatch{}
	for _, p := range all {
		if keep(p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func savePatches(dir string, list []AppliedPatch) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return writeDurably(dir, patchesFile, b)
}

// writeDurably replaces dir/name with data so that a crash leaves the old
// file or the new one, and once it returns the new one survives power
// loss: written aside, fsynced, renamed, and the directory fsynced.
func writeDurably(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// removeDurably removes dir/name (gone already is fine) and fsyncs dir.
func removeDurably(dir, name string) error {
	if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
// the configured health check and the write of the record.
//
// It is crash-safe. Before the tree is touched, the intent (which files,
// their staged copies and backups, the patch's id and version) is
// journalled in the state dir (patch-journal.json, written durably). The
// patch counts as applied once, and only once, the record (patches.json)
// says so; then the backups and the journal go. An agent that finds a
// journal at start-up (recoverPatch) rolls the tree back unless the record
// holds the patch, and records the attempt as rolled back, which keeps its
// id refused.
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
	record, err := PatchRecord(a.cfg.StateDir)
	if err != nil {
		return PatchResult{}, cmdErr("patch_failed", "reading the applied-patch record: %v", err)
	}
	for _, p := range record {
		switch {
		case p.ID == m.ID && p.applied():
			return PatchResult{}, cmdErr("patch_replayed", "patch %s was applied on %s", p.ID, p.AppliedAt.Format(time.RFC3339))
		case p.ID == m.ID:
			return PatchResult{}, cmdErr("patch_replayed", "patch %s was interrupted on %s and rolled back when the agent restarted; its id stays refused: build the fix again under a new id",
				p.ID, p.StartedAt.Format(time.RFC3339))
		case p.applied() && p.Series == m.Series && !patch.Newer(m.Version, p.Version):
			return PatchResult{}, cmdErr("patch_replayed", "version %s is not newer than %s, already applied in series %s", m.Version, p.Version, m.Series)
		}
	}
	if _, err := os.Lstat(filepath.Join(a.cfg.StateDir, journalFile)); err == nil {
		return PatchResult{}, cmdErr("patch_failed", "an earlier patch is still journalled in %s (its rollback or clean-up was cut short); restart the agent to finish it", a.cfg.StateDir)
	}

	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return PatchResult{}, cmdErr("patch_failed", "patch root %s: %v", m.Root, err)
	}
	defer root.Close()
	j := journal{V: 1, ID: m.ID, Version: m.Version, Series: m.Series, Root: m.Root, RootDir: rootDir, Digest: digest, Files: m.Files, StartedAt: time.Now().UTC()}
	tx := &swap{root: root, tag: fmt.Sprintf("%d", time.Now().UnixNano())}
	if err := tx.plan(m, &j); err != nil {
		return PatchResult{}, cmdErr("patch_rolled_back", "%v; nothing was changed", err)
	}
	if err := a.writeJournal(j); err != nil {
		return PatchResult{}, cmdErr("patch_failed", "journalling the patch in the state dir: %v; nothing was changed", err)
	}
	undo := func(why string, err error) (PatchResult, error) {
		rerr := rollbackSteps(root, j.Files, j.Steps)
		if rerr == nil {
			rerr = removeDurably(a.cfg.StateDir, journalFile)
		}
		if rerr != nil {
			// The journal stays: the next start-up finishes the job.
			a.log.Error("PATCH ROLLBACK INCOMPLETE; the agent finishes it when it restarts", "id", m.ID, "err", rerr)
			return PatchResult{}, cmdErr("patch_failed", "%s: %v; the rollback is incomplete (%v): restart the agent to finish it", why, err, rerr)
		}
		a.log.Error("patch rolled back", "id", m.ID, "why", why, "err", err)
		return PatchResult{}, cmdErr("patch_rolled_back", "%s: %v; every file was restored", why, err)
	}
	if err := tx.apply(m, files, j.Steps); err != nil {
		return undo("installing", err)
	}
	if len(a.cfg.PatchHealthCheck) > 0 {
		if err := a.healthCheck(ctx); err != nil {
			return undo("health check failed", err)
		}
	}
	// Fail closed: a patch whose record cannot be written would re-open
	// replays and downgrades, so it does not stay.
	now := time.Now().UTC()
	entry := AppliedPatch{ID: m.ID, Version: m.Version, Series: m.Series, Root: m.Root, Files: m.Files, Digest: digest, AppliedAt: now, State: PatchApplied, StartedAt: j.StartedAt}
	if err := savePatches(a.cfg.StateDir, append(record, entry)); err != nil {
		// Should the rename have landed though the directory's fsync
		// failed, put the old record back.
		if rerr := savePatches(a.cfg.StateDir, record); rerr != nil {
			a.log.Error("restoring the applied-patch record", "id", m.ID, "err", rerr)
		}
		return undo("the applied-patch record could not be written", err)
	}
	testFault("recorded")
	if err := commitSteps(root, j.Steps); err == nil {
		err = removeDurably(a.cfg.StateDir, journalFile)
		if err != nil {
			a.log.Error("removing the patch journal", "id", m.ID, "err", err)
		}
	} else {
		a.log.Error("removing patch backups; the agent finishes it when it restarts", "id", m.ID, "err", err)
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

// journalFile, in the state dir, exists exactly while a patch is being
// installed or undone.
const journalFile = "patch-journal.json"

// journal is the intent of a patch in progress: enough to undo it after a
// crash, or to finish it when the record already holds it.
type journal struct {
	V         int           `json:"v"`
	ID        string        `json:"id"`
	Version   string        `json:"version"`
	Series    string        `json:"series"`
	Root      string        `json:"root"`
	RootDir   string        `json:"root_dir"`
	Digest    string        `json:"bundle_sha256"`
	Files     []patch.File  `json:"files"`
	Steps     []journalStep `json:"steps"`
	StartedAt time.Time     `json:"started_at"`
}

// journalStep is one file: its staged copy and, when the target existed,
// the name the original moves to.
type journalStep struct {
	Target string `json:"target"`
	Staged string `json:"staged"`
	Backup string `json:"backup,omitempty"`
}

func (a *Agent) writeJournal(j journal) error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return writeDurably(a.cfg.StateDir, journalFile, b)
}

// recoverPatch finishes what a crash interrupted, before the agent
// connects: with a journal left and the patch not in the record, every
// file goes back as it was and the attempt is recorded as rolled back
// (its id stays refused); with the patch in the record, only its backups
// are removed. It fails, keeping the journal, when it cannot do either.
func (a *Agent) recoverPatch() error {
	a.patchMu.Lock()
	defer a.patchMu.Unlock()
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, journalFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("patch journal: %w", err)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil || j.V != 1 || j.ID == "" || !filepath.IsAbs(j.RootDir) {
		return fmt.Errorf("patch journal %s is unreadable (%v); check the patch root by hand, then remove it", filepath.Join(a.cfg.StateDir, journalFile), err)
	}
	fail := func(err error) error {
		return fmt.Errorf("interrupted patch %s: %w; the journal %s is kept", j.ID, err, filepath.Join(a.cfg.StateDir, journalFile))
	}
	record, err := PatchRecord(a.cfg.StateDir)
	if err != nil {
		return fail(fmt.Errorf("reading the applied-patch record: %w", err))
	}
	root, err := os.OpenRoot(j.RootDir)
	if err != nil {
		return fail(err)
	}
	defer root.Close()
	for _, p := range record {
		if p.ID == j.ID && p.applied() {
			// Recorded, so applied: only the clean-up was cut short.
			if err := commitSteps(root, j.Steps); err != nil {
				return fail(err)
			}
			a.log.Warn("interrupted patch was applied; its backups are removed", "id", j.ID, "version", j.Version)
			return removeDurably(a.cfg.StateDir, journalFile)
		}
	}
	if err := rollbackSteps(root, j.Files, j.Steps); err != nil {
		return fail(err)
	}
	known := false
	for _, p := range record {
		known = known || p.ID == j.ID
	}
	if !known {
		record = append(record, AppliedPatch{ID: j.ID, Version: j.Version, Series: j.Series, Root: j.Root, Files: j.Files, Digest: j.Digest,
			State: PatchRolledBack, StartedAt: j.StartedAt, RolledBackAt: time.Now().UTC()})
		if err := savePatches(a.cfg.StateDir, record); err != nil {
			return fail(fmt.Errorf("recording the rollback: %w", err))
		}
	}
	a.log.Warn("PATCH ROLLED BACK AT START-UP: an interrupted patch was undone; its id stays refused",
		"id", j.ID, "version", j.Version, "files", len(j.Steps), "started_at", j.StartedAt.Format(time.RFC3339))
	if err := removeDurably(a.cfg.StateDir, journalFile); err != nil {
		return fail(err)
	}
	return nil
}

// TestCrashAfterSwapEnv is a test-only fault point: set to N, the agent
// kills itself (SIGKILL) right after swapping in the Nth file of a patch,
// as a crash there would. Unset, as it is outside the tests, it does
// nothing.
const TestCrashAfterSwapEnv = "ARGUS_AGENT_TEST_CRASH_AFTER_SWAP"

// testFault is called at the points where a crash is most harmful
// ("staged" once every file is staged, "swap:N" after the Nth file is
// swapped in, "recorded" once the record holds the patch). Unit tests replace it; by default it honours
// TestCrashAfterSwapEnv and nothing else.
var testFault = func(point string) {
	n := os.Getenv(TestCrashAfterSwapEnv)
	if n == "" || point != "swap:"+n {
		return
	}
	fmt.Fprintf(os.Stderr, "%s=%s: test fault point, the agent kills itself after swap %s\n", TestCrashAfterSwapEnv, n, n)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// swap installs files under a root.
type swap struct {
	root *os.Root
	tag  string
}

func sidecar(target, kind, tag string) string {
	dir, name := path.Split(target)
	return dir + "." + name + ".argus-" + kind + "-" + tag
}

// plan checks every target and names its staged copy and, when the target
// exists, its backup, into the journal.
func (s *swap) plan(m patch.Manifest, j *journal) error {
	for _, f := range m.Files {
		st := journalStep{Target: f.Target, Staged: sidecar(f.Target, "new", s.tag)}
		fi, err := s.root.Lstat(f.Target)
		switch {
		case err == nil && !fi.Mode().IsRegular():
			return fmt.Errorf("target %s exists and is not a regular file", f.Target)
		case err == nil:
			st.Backup = sidecar(f.Target, "old", s.tag)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("target %s: %w", f.Target, err)
		}
		j.Steps = append(j.Steps, st)
	}
	return nil
}

// apply stages every file, then swaps each in, as the journal says.
func (s *swap) apply(m patch.Manifest, files map[string][]byte, steps []journalStep) error {
	// Stage everything first: a failure here has changed no target.
	for i, f := range m.Files {
		mode, _ := patch.ParseMode(f.Mode)
		fh, err := s.root.OpenFile(steps[i].Staged, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(mode))
		if err != nil {
			return fmt.Errorf("staging %s: %w", f.Target, err)
		}
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
	testFault("staged")
	// Swap each in: the old file moves aside, the new one takes its name.
	for i, st := range steps {
		if st.Backup != "" {
			if err := s.root.Rename(st.Target, st.Backup); err != nil {
				return fmt.Errorf("backing up %s: %w", st.Target, err)
			}
		} else if _, err := s.root.Lstat(st.Target); err == nil {
			return fmt.Errorf("target %s appeared during the patch", st.Target)
		}
		if err := s.root.Rename(st.Staged, st.Target); err != nil {
			return fmt.Errorf("installing %s: %w", st.Target, err)
		}
		testFault(fmt.Sprintf("swap:%d", i+1))
	}
	// Every new name is on disk before the record can say "applied".
	return syncDirs(s.root, steps)
}

// rollbackSteps puts every target back as the journal found it, newest
// first, judging from what is on disk, so it is right wherever a crash
// (or an earlier rollback) stopped: a backup still there is the original,
// and takes its name back; a target that had none and now holds the
// patch's content (its staged copy gone) was installed, and goes.
// Staged copies are removed.
func rollbackSteps(root *os.Root, files []patch.File, steps []journalStep) error {
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		st := steps[i]
		if st.Backup != "" {
			if _, err := root.Lstat(st.Backup); err == nil {
				if err := root.Rename(st.Backup, st.Target); err != nil {
					errs = append(errs, fmt.Errorf("restoring %s: %w", st.Target, err))
				}
			} else if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		} else if _, err := root.Lstat(st.Staged); errors.Is(err, fs.ErrNotExist) && i < len(files) && holds(root, st.Target, files[i].SHA256) {
			if err := root.Remove(st.Target); err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", st.Target, err))
			}
		}
		if err := root.Remove(st.Staged); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return syncDirs(root, steps)
}

// holds says whether name under root is a regular file with that digest.
func holds(root *os.Root, name, sha string) bool {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == sha
}

// commitSteps removes the backups and any staged copy left.
func commitSteps(root *os.Root, steps []journalStep) error {
	var errs []error
	for _, st := range steps {
		for _, p := range []string{st.Backup, st.Staged} {
			if p == "" {
				continue
			}
			if err := root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return syncDirs(root, steps)
}

// syncDirs fsyncs every directory that holds a target.
func syncDirs(root *os.Root, steps []journalStep) error {
	done := map[string]bool{}
	for _, st := range steps {
		dir := path.Dir(st.Target)
		if done[dir] {
			continue
		}
		done[dir] = true
		d, err := root.Open(dir)
		if err != nil {
			return err
		}
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("fsync %s: %w", dir, err)
		}
	}
	return nil
}
