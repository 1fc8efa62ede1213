package audit

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Committer groups audited transactions into shared commits. Every
// audited write serialises on the events chain head, so each one paying
// for its own commit (a WAL flush, and the lock and head read) caps
// throughput. Here the jobs queued at once share one transaction: the
// chain lock and head are taken once and carried, and one flush serves
// them all. Nothing is weakened: a job's Do returns only after the commit
// that holds it, and a job that fails makes the others run again alone, so
// each still commits or vanishes whole with its state change and both
// audit rows.
type Committer struct {
	pool     *pgxpool.Pool
	jobs     chan *job
	maxBatch int
	stop     chan struct{}
	stopped  chan struct{}
}

type job struct {
	ctx context.Context
	fn  func(context.Context, pgx.Tx) error
	// Or, instead of fn, statements and audit entries sent in one pipeline
	// with the rest of the group.
	stmts []Stmt
	rows  []*row
	done  chan error
}

// Stmt is one SQL statement of a pipelined job.
type Stmt struct {
	SQL  string
	Args []any
}

// NewCommitter starts a committer over pool; Close stops it.
func NewCommitter(pool *pgxpool.Pool) *Committer {
	c := &Committer{pool: pool, jobs: make(chan *job, 1024), maxBatch: 64, stop: make(chan struct{}), stopped: make(chan struct{})}
	go c.run()
	return c
}

// ErrClosed is returned for jobs submitted after Close.
var ErrClosed = errors.New("audit: committer closed")

// Do runs fn in the next group commit and returns once that
// commit is durable (or fn's own error). fn must do all its work in tx,
// with the context it is given: a caller giving up must not cancel a
// statement of the shared transaction.
func (c *Committer) Do(ctx context.Context, fn func(context.Context, pgx.Tx) error) error {
	if c == nil {
		return errors.New("audit: no committer")
	}
	j := &job{ctx: ctx, fn: fn, done: make(chan error, 1)}
	return c.submit(ctx, j)
}

// submit queues j and waits for its outcome; a job that slipped in as the
// committer closed gets ErrClosed rather than a wait that never ends.
func (c *Committer) submit(ctx context.Context, j *job) error {
	select {
	case c.jobs <- j:
	case <-c.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-j.done:
		return err
	case <-c.stopped:
		select {
		case err := <-j.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// Exec runs stmts and records entries, all in the next group commit. The
// group's statements travel to the database as one pipeline, so a group
// costs a few round trips however many jobs it holds.
func (c *Committer) Exec(ctx context.Context, stmts []Stmt, entries ...Entry) error {
	if c == nil {
		return errors.New("audit: no committer")
	}
	// Each row's canonical payload is encoded here, on the caller's
	// goroutine: only its place in the chain waits for the group.
	rows := make([]*row, len(entries))
	for i, e := range entries {
		r, err := prepare(e)
		if err != nil {
			return err
		}
		rows[i] = r
	}
	return c.submit(ctx, &job{ctx: ctx, stmts: stmts, rows: rows, done: make(chan error, 1)})
}

// Write records e through the committer, in a transaction of its own kind.
func (c *Committer) Write(ctx context.Context, e Entry) error {
	return c.Do(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := Record(ctx, tx, e)
		return err
	})
}

// Close finishes the queued jobs and stops.
func (c *Committer) Close() {
	close(c.stop)
	<-c.stopped
}

func (c *Committer) run() {
	defer close(c.stopped)
	for {
		var first *job
		select {
		case first = <-c.jobs:
		case <-c.stop:
			// Finish what was queued before the stop.
			for {
				select {
				case j := <-c.jobs:
					c.commit([]*job{j})
				default:
					return
				}
			}
		}
		batch := []*job{first}
	fill:
		for len(batch) < c.maxBatch {
			select {
			case j := <-c.jobs:
				batch = append(batch, j)
			default:
				break fill
			}
		}
		c.commit(batch)
	}
}

func (c *Committer) commit(batch []*job) {
	var live []*job
	for _, j := range batch {
		if err := j.ctx.Err(); err != nil {
			j.done <- err
			continue
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return
	}
	if err := c.run1(live); err == nil || len(live) == 1 {
		for _, j := range live {
			j.done <- err
		}
		return
	}
	// One job failed and took the group's transaction with it: each one
	// again, alone, so only the failing one fails.
	for _, j := range live {
		j.done <- c.run1([]*job{j})
	}
}

// run1 runs jobs in one transaction that holds the chain lock from its
// first audit row to its commit.
func (c *Committer) run1(jobs []*job) error {
	// The shared transaction must not die with one caller's context.
	ch := &chain{}
	ctx := context.WithValue(context.Background(), chainKey{}, ch)
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		var pending []*job
		for _, j := range jobs {
			if j.fn == nil {
				pending = append(pending, j)
				continue
			}
			if err := c.pipeline(ctx, tx, pending); err != nil {
				return err
			}
			pending = nil
			if err := j.fn(context.WithValue(context.WithoutCancel(j.ctx), chainKey{}, ch), tx); err != nil {
				return err
			}
		}
		return c.pipeline(ctx, tx, pending)
	})
}

// pipeline sends the statements and audit rows of jobs as one batch,
// placing each audit row in the chain in order.
func (c *Committer) pipeline(ctx context.Context, tx pgx.Tx, jobs []*job) error {
	if len(jobs) == 0 {
		return nil
	}
	seq, prev, err := chainHead(ctx, tx)
	if err != nil {
		return err
	}
	b := &pgx.Batch{}
	var (
		rows     []*row
		outcomes []string
	)
	for _, j := range jobs {
		for _, st := range j.stmts {
			b.Queue(st.SQL, st.Args...)
		}
		for _, r := range j.rows {
			rows = append(rows, r)
			outcomes = append(outcomes, r.e.Outcome)
		}
	}
	if len(rows) > 0 {
		var args []any
		args, seq, prev = insert(rows, seq, prev)
		b.Queue(insertRows, args...)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("audit: pipeline: %w", err)
	}
	ch := ctx.Value(chainKey{}).(*chain)
	ch.seq, ch.hash, ch.valid = seq, prev, true
	for _, o := range outcomes {
		auditWrites().Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", o)))
	}
	return nil
}
