// Package pgcluster runs a private PostgreSQL cluster from the machine's own
// server binaries (initdb, pg_ctl, postgres), for the server when no
// database URL is configured and for the test suite. The server supervises
// its cluster (Options.Supervise): the postmaster is its child, restarted
// when it dies and shut down when the server dies.
//
// The cluster never listens on TCP: its only way in is a unix socket inside
// the cluster directory, which is mode 0700 and owned by the cluster's OS
// user, so only that user (and root) can connect. PostgreSQL refuses to run
// as root; when the caller is root the cluster runs as the "postgres" user.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Port is the cluster's port number. With TCP off it only names the socket
// file (.s.PGSQL.5432), so clusters in different directories never clash.
const Port = 5432

// socketPathMax is the longest unix socket path the kernel accepts
// (sizeof(sun_path) - 1 on Linux).
const socketPathMax = 107

// Options configure Start.
type Options struct {
	// Dir is the cluster's data directory (PGDATA). It is created when
	// missing and reused when it already holds a cluster.
	Dir string
	// Ephemeral trades durability for speed (fsync off): for test clusters
	// that are thrown away.
	Ephemeral bool
	// Supervise runs the postmaster as a child of this process instead of
	// as a daemon, for a caller that owns the cluster for its lifetime:
	// when the postmaster exits it is started again (after a back-off that
	// grows from half a second to ten), and when this process dies, even
	// by SIGKILL, the kernel makes the postmaster shut down. A postmaster
	// already running on Dir is adopted and watched, and replaced by a
	// child once it exits. Stop ends the supervision.
	Supervise bool
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
}

// Cluster is a running private PostgreSQL cluster.
type Cluster struct {
	dir     string
	bin     string
	owner   *osUser
	started bool
	log     *slog.Logger
	sup     *supervisor // nil unless Options.Supervise
}

type osUser struct {
	name     string
	uid, gid uint32
}

// Start starts the cluster in opts.Dir, creating it with initdb the first
// time. When a postmaster already runs on that directory (left by a process
// that died, or started by another argus process) it is adopted, and
// Started reports false.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if strings.ContainsAny(dir, "\n\r'") {
		return nil, fmt.Errorf("pgcluster: directory %q holds a quote or newline", dir)
	}
	if n := len(dir) + len("/.s.PGSQL.") + len(strconv.Itoa(Port)); n > socketPathMax {
		return nil, fmt.Errorf("pgcluster: directory %q is too long for a unix socket path (%d > %d bytes); choose a shorter data directory", dir, n, socketPathMax)
	}
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, bin: bin, log: log}
	if os.Geteuid() == 0 {
		if c.owner, err = lookupUser("postgres"); err != nil {
			return nil, fmt.Errorf("pgcluster: running as root needs the postgres user to own the cluster: %w", err)
		}
		// The parent may be new; let the cluster user through it without
		// letting anyone list it.
		if err := os.MkdirAll(filepath.Dir(dir), 0o711); err != nil {
			return nil, fmt.Errorf("pgcluster: %w", err)
		}
		if err := checkTraversable(filepath.Dir(dir), c.owner); err != nil {
			return nil, err
		}
	}

	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		if err := c.initdb(ctx, opts.Ephemeral); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.writeSettings(opts.Ephemeral); err != nil {
		return nil, err
	}

	if opts.Supervise {
		if c.started, err = c.supervise(ctx); err != nil {
			return nil, err
		}
		return c, nil
	}
	if c.running(ctx) {
		log.Info("adopting running PostgreSQL cluster", "dir", dir)
		return c, c.waitReady(ctx)
	}
	logFile := c.logFile()
	if out, err := c.run(ctx, "pg_ctl", "-D", dir, "-l", logFile, "-w", "-t", "60", "start"); err != nil {
		return nil, fmt.Errorf("pgcluster: pg_ctl start: %w: %s%s", err, out, logTail(logFile))
	}
	c.started = true
	log.Info("started private PostgreSQL cluster", "dir", dir)
	return c, c.waitReady(ctx)
}

// Dir returns the cluster's data directory, which is also its socket directory.
func (c *Cluster) Dir() string { return c.dir }

// Started reports whether Start launched the postmaster (rather than
// adopting one).
func (c *Cluster) Started() bool { return c.started }

// ConnString returns a libpq keyword/value connection string for database
// dbname over the cluster's unix socket.
func (c *Cluster) ConnString(dbname string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", c.dir, Port, dbname)
}

// Exists reports whether dir holds a cluster (initdb has run there).
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// HasDatabase reports whether database name exists in the cluster.
func (c *Cluster) HasDatabase(ctx context.Context, name string) (bool, error) {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return false, fmt.Errorf("pgcluster: connect: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return false, fmt.Errorf("pgcluster: look up database %q: %w", name, err)
	}
	return exists, nil
}

// EnsureDatabase creates database name when it does not exist.
func (c *Cluster) EnsureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return fmt.Errorf("pgcluster: connect: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("pgcluster: look up database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("pgcluster: create database %q: %w", name, err)
	}
	return nil
}

// Stop shuts the cluster down (fast mode: open sessions are ended, nothing
// committed is lost) and waits until the postmaster has exited. A
// supervised cluster is no longer restarted.
func (c *Cluster) Stop(ctx context.Context) error {
	if c.sup != nil {
		return c.sup.halt(ctx)
	}
	if !c.running(ctx) {
		return nil
	}
	pid := PID(c.dir)
	if out, err := c.run(ctx, "pg_ctl", "-D", c.dir, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("pgcluster: pg_ctl stop: %w: %s", err, out)
	}
	// pg_ctl returns once postmaster.pid is gone, a moment before the
	// process itself has exited; callers are promised it has.
	for !Exited(pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: postmaster %d still running: %w", pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	c.log.Info("stopped private PostgreSQL cluster", "dir", c.dir)
	return nil
}

// PID returns the postmaster's process id from postmaster.pid, or 0 when
// none is recorded.
func PID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(first))
	return pid
}

// Exited reports whether process pid has ended (or is a zombie awaiting its
// parent, which for a daemonised postmaster may never come).
func Exited(pid int) bool {
	if pid <= 0 {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func (c *Cluster) initdb(ctx context.Context, ephemeral bool) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.chown(c.dir); err != nil {
		return err
	}
	args := []string{"-D", c.dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"}
	if ephemeral {
		args = append(args, "--no-sync")
	}
	c.log.Info("creating private PostgreSQL cluster", "dir", c.dir)
	if out, err := c.run(ctx, "initdb", args...); err != nil {
		return fmt.Errorf("pgcluster: initdb: %w: %s", err, out)
	}
	// Our settings live in their own file, rewritten on every start, so a
	// moved data directory or a changed option takes effect.
	conf := filepath.Join(c.dir, "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	_, err = f.WriteString("\ninclude_if_exists = 'argus.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

func (c *Cluster) writeSettings(ephemeral bool) error {
	var b strings.Builder
	b.WriteString("# Written by argus on every start; edits are lost.\n")
	b.WriteString("listen_addresses = ''\n")
	fmt.Fprintf(&b, "unix_socket_directories = '%s'\n", c.dir)
	b.WriteString("unix_socket_permissions = 0700\n")
	fmt.Fprintf(&b, "port = %d\n", Port)
	b.WriteString("max_connections = 200\n")
	if ephemeral {
		b.WriteString("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
	}
	path := filepath.Join(c.dir, "argus.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.chown(path)
}

func (c *Cluster) running(ctx context.Context) bool {
	_, err := c.run(ctx, "pg_ctl", "-D", c.dir, "status")
	return err == nil
}

// waitReady waits until the cluster accepts connections; pg_ctl -w already
// waits on start, but an adopted cluster may still be recovering.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return c.pollReady(ctx)
}

// pollReady tries to connect until it can, or until ctx ends.
func (c *Cluster) pollReady(ctx context.Context) error {
	for {
		conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: cluster in %s not ready: %w", c.dir, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// command prepares one of PostgreSQL's programs to run as the cluster's
// user.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Env = []string{"PATH=" + c.bin + ":/usr/bin:/bin", "LC_ALL=C"}
	// Own process group: a Ctrl-C at the terminal reaches the server, which
	// then stops the cluster in order, rather than the postmaster directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: c.owner.uid, Gid: c.owner.gid}
		cmd.Dir = c.dir
	}
	return cmd
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := c.command(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return bytes.TrimSpace(out.Bytes()), err
}

func (c *Cluster) chown(path string) error {
	if c.owner == nil {
		return nil
	}
	if err := os.Chown(path, int(c.owner.uid), int(c.owner.gid)); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// FindBinDir returns the directory holding initdb and pg_ctl: the one on
// PATH, else the newest /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool {
		return versionOf(matches[i]) > versionOf(matches[j])
	})
	for _, m := range matches {
		dir := filepath.Dir(m)
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("pgcluster: PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; install them or set a database URL")
}

func versionOf(initdbPath string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(initdbPath))), 64)
	return v
}

func lookupUser(name string) (*osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &osUser{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// checkTraversable makes sure the cluster user can reach dir: PostgreSQL
// opens its data directory by path, so every ancestor must let it through.
func checkTraversable(dir string, u *osUser) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			mode := fi.Mode().Perm()
			ok := mode&0o001 != 0 ||
				(st.Uid == u.uid && mode&0o100 != 0) ||
				(st.Gid == u.gid && mode&0o010 != 0)
			if !ok {
				return fmt.Errorf("pgcluster: the %s user cannot enter %s (mode %v), so it cannot run a cluster below it; choose a data directory outside it or allow traversal (chmod o+x %s)", u.name, d, mode, d)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n" + string(b)
}
