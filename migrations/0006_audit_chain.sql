-- The events hash chain covers bytes that are stored as they are.
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
