-- A command keeps the moment past which no answer can come, so one whose
-- completion was never written (the database or the server died on the
-- way) can be found and marked interrupted; a patch whose outcome is
-- unknown is settled later, from what its agent reports having applied.
ALTER TABLE commands ADD COLUMN deadline timestamptz;
ALTER TABLE commands ADD COLUMN settled_at timestamptz;
ALTER TABLE commands DROP CONSTRAINT commands_status_check;
ALTER TABLE commands ADD CONSTRAINT commands_status_check
    CHECK (status IN ('requested', 'succeeded', 'failed', 'refused', 'timeout', 'interrupted'));
CREATE INDEX commands_unterminated ON commands (deadline) WHERE status = 'requested';
