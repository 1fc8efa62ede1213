package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/internal/pgcluster"
	"github.com/argus-remote/argus/migrations"
)

// Database is the server's PostgreSQL: a pool, and the private cluster
// behind it when no database URL is configured.
type Database struct {
	Pool    *pgxpool.Pool
	cluster *pgcluster.Cluster
	// stopCluster says Close stops the private cluster. The server always
	// stops it; a one-off command stops it only if it started it.
	stopCluster bool
}

// databaseName is the database the server uses in its private cluster.
const databaseName = "argus"

// OpenDatabase connects to the configured database, or starts the private
// cluster in the data directory, and brings the schema up to date.
// serverOwned says whether the caller is the server, which owns the
// private cluster for its lifetime: it runs the postmaster as its child,
// restarts it when it dies and takes it down when it dies itself.
func OpenDatabase(ctx context.Context, cfg Config, log *slog.Logger, serverOwned bool) (*Database, error) {
	db := &Database{}
	url := cfg.DatabaseURL
	if url == "" {
		// Only the server creates the cluster and its database: to any
		// other command a data directory without them is a mistake (a
		// typo, a wrong user's home), not an empty world.
		if !serverOwned && !pgcluster.Exists(clusterDir(cfg.DataDir)) {
			return nil, noDatabase(cfg.DataDir)
		}
		c, err := startCluster(ctx, cfg.DataDir, log, serverOwned)
		if err != nil {
			return nil, err
		}
		db.cluster = c
		db.stopCluster = serverOwned || c.Started()
		if serverOwned {
			err = c.EnsureDatabase(ctx, databaseName)
		} else if ok, herr := c.HasDatabase(ctx, databaseName); herr != nil {
			err = herr
		} else if !ok {
			err = noDatabase(cfg.DataDir)
		}
		if err != nil {
			db.Close(ctx)
			return nil, err
		}
		url = c.ConnString(databaseName)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		db.Close(ctx)
		return nil, fmt.Errorf("database: %w", err)
	}
	db.Pool = pool
	if err := pool.Ping(ctx); err != nil {
		db.Close(ctx)
		return nil, fmt.Errorf("database: %w", err)
	}
	applied, err := migrations.Apply(ctx, pool)
	if err != nil {
		db.Close(ctx)
		return nil, err
	}
	if len(applied) > 0 {
		log.Info("applied database migrations", "versions", applied)
	}
	return db, nil
}

// ClusterDir returns the private cluster's directory, or "" when a
// database URL is in use.
func (db *Database) ClusterDir() string {
	if db.cluster == nil {
		return ""
	}
	return db.cluster.Dir()
}

// Close closes the pool and stops the private cluster when it is ours to stop.
func (db *Database) Close(ctx context.Context) error {
	if db.Pool != nil {
		db.Pool.Close()
	}
	if db.cluster != nil && db.stopCluster {
		return db.cluster.Stop(ctx)
	}
	return nil
}

// ErrNoDatabase is returned to a command other than the server's for a
// data directory that holds no ARGUS database.
var ErrNoDatabase = errors.New("no ARGUS database")

func noDatabase(dataDir string) error {
	return fmt.Errorf("%w in %s: start `argus-server serve --data-dir %s` once, or set ARGUS_DATABASE_URL", ErrNoDatabase, dataDir, dataDir)
}

// clusterDir is where the private cluster lives in a data directory.
func clusterDir(dataDir string) string { return filepath.Join(dataDir, "postgres") }

func startCluster(ctx context.Context, dataDir string, log *slog.Logger, supervise bool) (*pgcluster.Cluster, error) {
	if err := makeDataDir(dataDir); err != nil {
		return nil, err
	}
	return pgcluster.Start(ctx, pgcluster.Options{Dir: clusterDir(dataDir), Supervise: supervise, Logger: log})
}
