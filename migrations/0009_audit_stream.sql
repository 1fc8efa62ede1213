-- The audit is streamed to a syslog receiver (a SIEM) as it commits
-- (controlplane/auditstream). Each receiver's position is the last event
-- seq it accepted: a restart or an outage resends from there. Only the node
-- holding the stream's advisory lock writes it.
CREATE TABLE audit_stream_positions (
    receiver   text PRIMARY KEY CHECK (btrim(receiver) <> '' AND length(receiver) <= 512),
    seq        bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    node       text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- New events are announced on argus_events, once per statement (a group
-- commit writes many rows in one): the streamer wakes on it instead of
-- polling hard. Notifications are delivered on commit, so a woken streamer
-- finds the rows committed.
CREATE FUNCTION events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('argus_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_inserted AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_inserted();
