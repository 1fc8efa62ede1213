-- Read-only tokens a tenant uses to watch its own remote-support
-- indicator (the status page, or any MQTT client). Stored as hashes.
CREATE TABLE tenant_viewer_tokens (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    description text NOT NULL DEFAULT '',
    created_by  uuid REFERENCES operators (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX tenant_viewer_tokens_tenant ON tenant_viewer_tokens (tenant_id);
