-- The nodes of a cluster (one row on a single node). Each renews its
-- lease every few seconds; one whose lease has run out is dead to the
-- others, which clear the presence it held. Times come from the
-- database's clock, the one clock every node shares.
CREATE TABLE nodes (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$'),
    api_url          text NOT NULL DEFAULT '',
    mqtt_url         text NOT NULL DEFAULT '',
    version          text NOT NULL DEFAULT '',
    started_at       timestamptz NOT NULL DEFAULT now(),
    renewed_at       timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    fenced           boolean NOT NULL DEFAULT false,
    left_at          timestamptz
);

-- Every connection of an agent takes the next epoch, so a disconnect
-- seen late (by a node the agent has left) clears only its own
-- connection, never a newer one elsewhere.
ALTER TABLE agents ADD COLUMN presence_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE agent_presence ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
