-- The control plane's signing keys, oldest first: the shared record every
-- node reads. Only public halves and signatures are here; each private
-- half stays in a 0600 file (named by "file") in the directory of the
-- configured command-signing-key. Seq 0 is the key agents pinned at
-- enrollment; every later key carries the key change ("link") signed by
-- the key before it, and a retired key the retirement signed by a newer
-- one.
CREATE TABLE signing_keys (
    seq        integer PRIMARY KEY CHECK (seq >= 0 AND seq < 32),
    key_id     text NOT NULL UNIQUE CHECK (key_id ~ '^[0-9a-f]{32}$'),
    public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),
    file       text NOT NULL CHECK (file ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$'),
    link       bytea CHECK (octet_length(link) <= 4096),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    retirement bytea CHECK (octet_length(retirement) <= 4096),
    CHECK ((seq = 0) = (link IS NULL)),
    CHECK ((retired_at IS NULL) = (retirement IS NULL))
);

-- The key set each agent last confirmed it holds (its newest and oldest
-- trusted key), so a key change is sent again only to agents that lack it.
CREATE TABLE signing_key_agents (
    agent_id      uuid PRIMARY KEY REFERENCES agents (id),
    newest_key_id text NOT NULL CHECK (newest_key_id ~ '^[0-9a-f]{32}$'),
    oldest_key_id text NOT NULL CHECK (oldest_key_id ~ '^[0-9a-f]{32}$'),
    accepted_at   timestamptz NOT NULL DEFAULT now()
);
