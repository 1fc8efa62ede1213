-- Core schema of ARGUS remote support.
--
-- Security rules that must hold whatever the application code does are
-- enforced here, in the database:
--   * a tenant cannot be armed without a signed consent in force;
--   * a support session cannot last longer than 120 minutes;
--   * an agent has at most one live session;
--   * a session's agent belongs to the session's tenant;
--   * events is append-only.

CREATE TABLE operators (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE
                CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- Bearer tokens: the id is public (it finds the row), the secret is only
-- ever stored as its SHA-256.
CREATE TABLE operator_tokens (
    id           text PRIMARY KEY,
    operator_id  uuid NOT NULL REFERENCES operators (id),
    secret_hash  bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes       text[] NOT NULL CHECK (
                     cardinality(scopes) > 0 AND
                     scopes <@ ARRAY['remote_support', 'tenant:arm', 'tenant:admin', 'agent:admin',
                                     'audit:read', 'operator:admin', 'monitor']::text[]),
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE INDEX operator_tokens_operator ON operator_tokens (operator_id);

CREATE TABLE tenants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE
               CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every consent ever recorded is kept; withdrawing one sets withdrawn_at.
CREATE TABLE tenant_consents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    document_id     text NOT NULL CHECK (btrim(document_id) <> '' AND length(document_id) <= 256),
    signed_by       text NOT NULL CHECK (btrim(signed_by) <> '' AND length(signed_by) <= 256),
    signed_at       timestamptz NOT NULL,
    recorded_by     uuid REFERENCES operators (id),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    withdrawn_at    timestamptz,
    withdrawn_by    uuid REFERENCES operators (id),
    withdraw_reason text,
    in_force        boolean GENERATED ALWAYS AS (withdrawn_at IS NULL) STORED,
    CHECK ((withdrawn_at IS NULL) = (withdraw_reason IS NULL)),
    -- Target of the tenants foreign key below.
    UNIQUE (id, tenant_id, in_force)
);
CREATE INDEX tenant_consents_tenant ON tenant_consents (tenant_id, recorded_at);

-- The tenant points at its consent in force. The foreign key names the
-- tenant and in_force = true, so a tenant can only point at its own consent
-- and that consent cannot be withdrawn while pointed at; the CHECK makes
-- "armed without consent" unrepresentable.
ALTER TABLE tenants
    ADD COLUMN consent_id       uuid,
    ADD COLUMN consent_in_force boolean CHECK (consent_in_force),
    ADD COLUMN armed_at         timestamptz,
    ADD COLUMN armed_by         uuid REFERENCES operators (id),
    ADD COLUMN arm_reason       text,
    ADD CONSTRAINT tenants_consent_fk FOREIGN KEY (consent_id, id, consent_in_force)
        REFERENCES tenant_consents (id, tenant_id, in_force),
    ADD CONSTRAINT tenants_consent_pair CHECK ((consent_id IS NULL) = (consent_in_force IS NULL)),
    ADD CONSTRAINT tenants_armed_requires_consent CHECK (armed_at IS NULL OR consent_id IS NOT NULL),
    ADD CONSTRAINT tenants_arm_reason CHECK (armed_at IS NULL OR (arm_reason IS NOT NULL AND btrim(arm_reason) <> ''));

CREATE TABLE agents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    secret_hash   bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    enrolled_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    revoked_by    uuid REFERENCES operators (id),
    revoke_reason text,
    last_seen_at  timestamptz,
    version       text,
    manifest      jsonb,
    manifest_at   timestamptz,
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL)),
    -- Target of the support_sessions foreign key.
    UNIQUE (id, tenant_id)
);
CREATE UNIQUE INDEX agents_live_name ON agents (tenant_id, name) WHERE revoked_at IS NULL;

-- Which server node holds each connected agent's broker connection. A row
-- exists exactly while the agent is connected; a node clears its own rows
-- when it starts, so a crash leaves nothing stale for long.
CREATE TABLE agent_presence (
    agent_id     uuid PRIMARY KEY REFERENCES agents (id),
    node_id      text NOT NULL,
    connected_at timestamptz NOT NULL DEFAULT now(),
    remote_addr  text NOT NULL DEFAULT ''
);
CREATE INDEX agent_presence_node ON agent_presence (node_id);

CREATE TABLE enrollment_tokens (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    agent_name  text NOT NULL CHECK (agent_name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_by  uuid REFERENCES operators (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    agent_id    uuid REFERENCES agents (id),
    CHECK (expires_at > created_at),
    CHECK ((used_at IS NULL) = (agent_id IS NULL))
);

CREATE TABLE support_sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    agent_id    uuid NOT NULL,
    operator_id uuid NOT NULL REFERENCES operators (id),
    token_hash  bytea NOT NULL CHECK (octet_length(token_hash) = 32),
    reason      text NOT NULL CHECK (btrim(reason) <> '' AND length(reason) <= 1024),
    client_ip   inet,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    acked_at    timestamptz,
    ended_at    timestamptz,
    end_reason  text CHECK (end_reason IN ('deactivated', 'expired', 'agent_kill_switch', 'tenant_disarmed',
                                           'consent_withdrawn', 'agent_revoked', 'agent_did_not_acknowledge')),
    FOREIGN KEY (agent_id, tenant_id) REFERENCES agents (id, tenant_id),
    CONSTRAINT support_sessions_ttl_cap CHECK (expires_at > created_at AND expires_at <= created_at + interval '120 minutes'),
    CONSTRAINT support_sessions_end CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE UNIQUE INDEX support_sessions_one_live_per_agent ON support_sessions (agent_id) WHERE ended_at IS NULL;
CREATE INDEX support_sessions_tenant ON support_sessions (tenant_id, created_at);

CREATE TABLE commands (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id   uuid NOT NULL REFERENCES support_sessions (id),
    name         text NOT NULL CHECK (name IN ('ping', 'agent_info', 'tail_log', 'read_file',
                                               'get_capabilities', 'apply_patch', 'camera_view')),
    args_digest  bytea NOT NULL CHECK (octet_length(args_digest) = 32),
    status       text NOT NULL CHECK (status IN ('requested', 'succeeded', 'failed', 'refused', 'timeout')),
    error_code   text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    CHECK ((status = 'requested') = (completed_at IS NULL))
);
CREATE INDEX commands_session ON commands (session_id, requested_at);

-- Operational audit trail: one row per audited action, allowed or denied.
-- No foreign keys: a denied attempt may name things that do not exist.
CREATE TABLE audit_log (
    id          uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    outcome     text NOT NULL,
    tenant_id   uuid,
    agent_id    uuid,
    session_id  uuid,
    client_ip   inet,
    reason      text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_time ON audit_log (occurred_at);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, occurred_at);
CREATE INDEX audit_log_session ON audit_log (session_id, occurred_at);

-- Append-only event store, written in the same transaction as audit_log
-- (same id) and hash-chained: hash covers the canonical payload and
-- prev_hash, seq increases strictly.
CREATE TABLE events (
    seq         bigint PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL,
    action      text NOT NULL,
    payload     jsonb NOT NULL,
    prev_hash   bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash        bytea NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE INDEX events_time ON events (occurred_at);

CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
