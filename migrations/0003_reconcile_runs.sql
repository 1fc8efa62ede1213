-- One row per scheduled reconciliation: the first server to claim a day's
-- run does it; the others see the row and stand aside.
CREATE TABLE reconcile_runs (
    scheduled_for timestamptz PRIMARY KEY,
    node          text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    clean         boolean,
    mismatches    integer
);
