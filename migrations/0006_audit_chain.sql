-- The events hash chain covers bytes that are stored as they are, and
-- reconciliation runs record the head of the chain they reached.
--
-- jsonb keeps a number by its value and spells it its own way (1e-7 reads
-- back as 0.0000001, -0 as 0), so a hash computed over the encoded
-- payload could not always be recomputed from payload. Each event now
-- keeps the exact bytes its hash covers: hash = sha256(prev_hash ||
-- canonical), and payload is parsed from those bytes on insert (so the
-- two say the same; reconciliation checks they still do). Anyone can
-- verify the chain from these two columns alone.
--
-- Events written before this migration have no canonical bytes; their
-- hash is recomputed from payload, as it always was. NOT VALID: the CHECK
-- holds for every row written from now on, and not for those.
ALTER TABLE events ADD COLUMN canonical bytea;
ALTER TABLE events ADD CONSTRAINT events_canonical_kept CHECK (canonical IS NOT NULL) NOT VALID;

-- Every reconciliation, nightly or on demand, is a row here and records
-- the chain head it reached: the newest event it verified (head_seq,
-- head_hash, and when that event occurred). Each run checks that the
-- chain still holds the heads recorded before it: rows deleted from the
-- end of both trails leave no gap, but they take a recorded head with
-- them. Nightly runs still claim their day by scheduled_for (now UNIQUE,
-- NULL for runs on demand).
ALTER TABLE reconcile_runs DROP CONSTRAINT reconcile_runs_pkey;
ALTER TABLE reconcile_runs
    ALTER COLUMN scheduled_for DROP NOT NULL,
    ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN kind text NOT NULL DEFAULT 'nightly' CHECK (kind IN ('nightly', 'cli', 'api')),
    ADD COLUMN window_from timestamptz,
    ADD COLUMN window_to timestamptz,
    ADD COLUMN audit_rows integer,
    ADD COLUMN events integer,
    ADD COLUMN head_seq bigint,
    ADD COLUMN head_hash bytea CHECK (octet_length(head_hash) = 32),
    ADD COLUMN head_at timestamptz,
    ADD CONSTRAINT reconcile_runs_scheduled_for_key UNIQUE (scheduled_for),
    ADD CONSTRAINT reconcile_runs_nightly_scheduled CHECK ((kind = 'nightly') = (scheduled_for IS NOT NULL)),
    ADD CONSTRAINT reconcile_runs_head CHECK ((head_seq IS NULL) = (head_hash IS NULL) AND (head_seq IS NULL) = (head_at IS NULL));
CREATE INDEX reconcile_runs_head_seq ON reconcile_runs (head_seq) WHERE head_seq IS NOT NULL;
CREATE INDEX reconcile_runs_head_at ON reconcile_runs (head_at) WHERE head_at IS NOT NULL;

-- Recorded heads are kept: no run is deleted, and a head once recorded is
-- not changed (a claimed nightly run records its head when it finishes).
CREATE FUNCTION reconcile_runs_keep_heads() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (OLD.head_seq IS NULL OR
        (NEW.head_seq, NEW.head_hash, NEW.head_at) IS NOT DISTINCT FROM (OLD.head_seq, OLD.head_hash, OLD.head_at)) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'reconcile_runs keeps the heads it recorded: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER reconcile_runs_keep_heads
    BEFORE UPDATE OR DELETE ON reconcile_runs
    FOR EACH ROW EXECUTE FUNCTION reconcile_runs_keep_heads();

CREATE TRIGGER reconcile_runs_no_truncate
    BEFORE TRUNCATE ON reconcile_runs
    FOR EACH STATEMENT EXECUTE FUNCTION reconcile_runs_keep_heads();
