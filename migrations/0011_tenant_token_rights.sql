-- A tenant's tokens carry rights: view (watch the indicator and the live
-- command feed), end (end the tenant's sessions from its page) and
-- approve (decide activations waiting for approval). Every token views;
-- the tokens minted before rights existed are view-only.
ALTER TABLE tenant_viewer_tokens
    ADD COLUMN rights text[] NOT NULL DEFAULT ARRAY['view']::text[]
    CHECK (rights <@ ARRAY['view', 'end', 'approve']::text[] AND 'view' = ANY (rights)
           AND cardinality(rights) BETWEEN 1 AND 3);

-- A tenant may end its own sessions from its page.
ALTER TABLE support_sessions DROP CONSTRAINT support_sessions_end_reason_check;
ALTER TABLE support_sessions ADD CONSTRAINT support_sessions_end_reason_check CHECK (end_reason IN ('deactivated', 'expired',
    'agent_kill_switch', 'tenant_disarmed', 'consent_withdrawn', 'agent_revoked', 'agent_did_not_acknowledge', 'tenant_ended'));
