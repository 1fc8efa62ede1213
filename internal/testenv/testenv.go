// Package testenv provisions what the test suite runs against: one
// throwaway PostgreSQL cluster per test binary (or the server named by
// ARGUS_TEST_DATABASE_URL) and a fresh database per test.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/internal/pgcluster"
	"github.com/argus-remote/argus/migrations"
)

// EnvDatabaseURL names a PostgreSQL server to use instead of a private
// cluster; the connecting role must be allowed to create databases.
const EnvDatabaseURL = "ARGUS_TEST_DATABASE_URL"

var shared struct {
	once     sync.Once
	err      error
	adminURL string
	cluster  *pgcluster.Cluster
	dir      string

	tplOnce sync.Once
	tplErr  error
	tpl     string
}

// Main runs the tests of a package and then stops the shared cluster.
// Use it from TestMain: func TestMain(m *testing.M) { testenv.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	teardown()
	if binaries.dir != "" {
		_ = os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// reapOrphans stops test clusters whose test binary is gone.
func reapOrphans() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "argus-pg-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || !pgcluster.Exited(pid) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(d, "pg"), Ephemeral: true}); err == nil {
			_ = c.Stop(ctx)
		}
		cancel()
		_ = os.RemoveAll(d)
	}
}

func teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if shared.tpl != "" && shared.adminURL != "" {
		_ = dropDatabase(ctx, shared.adminURL, shared.tpl)
	}
	if shared.cluster != nil {
		if err := shared.cluster.Stop(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
		}
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
}

// AdminURL returns a connection string with the right to create databases,
// starting the shared cluster on first use.
func AdminURL(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		if u := os.Getenv(EnvDatabaseURL); u != "" {
			shared.adminURL = u
			return
		}
		reapOrphans()
		dir, err := os.MkdirTemp("", "argus-pg-")
		if err != nil {
			shared.err = err
			return
		}
		// The owner's pid lets a later run stop this cluster should this
		// test binary die without its teardown (a panic, a kill).
		_ = os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		// When the tests run as root the cluster runs as postgres, which
		// must be able to pass through this directory.
		if err := os.Chmod(dir, 0o711); err != nil {
			shared.err = err
			return
		}
		shared.dir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), Ephemeral: true})
		if err != nil {
			shared.err = err
			return
		}
		shared.cluster = c
		shared.adminURL = c.ConnString("postgres")
	})
	if shared.err != nil {
		t.Fatalf("testenv: PostgreSQL: %v", shared.err)
	}
	return shared.adminURL
}

// EmptyDatabase creates a database with no schema and returns its
// connection string; it is dropped when the test ends.
func EmptyDatabase(t testing.TB) string {
	t.Helper()
	return createDatabase(t, "")
}

// DatabaseURL creates a database holding the current schema and returns its
// connection string; it is dropped when the test ends.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	admin := AdminURL(t)
	shared.tplOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		name := "argus_tpl_" + randomSuffix()
		if shared.tplErr = execSQL(ctx, admin, "CREATE DATABASE "+name); shared.tplErr != nil {
			return
		}
		shared.tpl = name
		pool, err := pgxpool.New(ctx, WithDatabase(admin, name))
		if err != nil {
			shared.tplErr = err
			return
		}
		defer pool.Close()
		_, shared.tplErr = migrations.Apply(ctx, pool)
	})
	if shared.tplErr != nil {
		t.Fatalf("testenv: template database: %v", shared.tplErr)
	}
	return createDatabase(t, shared.tpl)
}

// Pool returns a pool on a fresh database holding the current schema.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), DatabaseURL(t))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func createDatabase(t testing.TB, template string) string {
	t.Helper()
	admin := AdminURL(t)
	name := "argus_test_" + randomSuffix()
	stmt := "CREATE DATABASE " + name
	if template != "" {
		stmt += " TEMPLATE " + template + " STRATEGY FILE_COPY"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := execSQL(ctx, admin, stmt); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDatabase(ctx, admin, name); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return WithDatabase(admin, name)
}

func dropDatabase(ctx context.Context, admin, name string) error {
	return execSQL(ctx, admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

func execSQL(ctx context.Context, connString, stmt string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, stmt)
	return err
}

// WithDatabase returns connString pointed at database name; it accepts both
// URL and keyword/value forms.
func WithDatabase(connString, name string) string {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	// In keyword/value form a later keyword overrides an earlier one.
	return connString + " dbname=" + name
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
