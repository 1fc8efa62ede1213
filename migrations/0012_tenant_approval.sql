-- A tenant may require that it approve each activation before it opens:
-- mode 'required' makes an activation that passed every other gate wait
-- for a decision by a tenant token with the approve right, for at most
-- approval_timeout. The bounds are the server's too (5 s to 1 h).
ALTER TABLE tenants
    ADD COLUMN approval_mode text NOT NULL DEFAULT 'off' CHECK (approval_mode IN ('off', 'required')),
    ADD COLUMN approval_timeout interval NOT NULL DEFAULT interval '10 minutes'
        CHECK (approval_timeout BETWEEN interval '5 seconds' AND interval '1 hour');

-- One row per activation that waited. Its id is the session's id, which
-- support_sessions holds only once it is approved and opened: a request
-- that waits is no session anything can command, end or publish.
CREATE TABLE session_approvals (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    agent_id      uuid NOT NULL,
    operator_id   uuid NOT NULL REFERENCES operators (id),
    reason        text NOT NULL CHECK (btrim(reason) <> '' AND length(reason) <= 1024),
    ttl           interval NOT NULL CHECK (ttl > interval '0' AND ttl <= interval '120 minutes'),
    client_ip     inet,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    deadline      timestamptz NOT NULL,
    decided_at    timestamptz,
    -- approved, denied, timeout (no answer by the deadline), withdrawn
    -- (the operator gave up, or the waiting server stopped).
    decision      text CHECK (decision IN ('approved', 'denied', 'timeout', 'withdrawn')),
    decided_by    text,
    decision_note text CHECK (length(decision_note) <= 1024),
    -- What became of the activation once decided: 'opened' or the code
    -- it was refused with; argusctl reads it to return.
    outcome       text,
    outcome_message text,
    FOREIGN KEY (agent_id, tenant_id) REFERENCES agents (id, tenant_id),
    CHECK (deadline > requested_at),
    CHECK ((decided_at IS NULL) = (decision IS NULL))
);
-- One waiting request per agent, whichever node it waits on.
CREATE UNIQUE INDEX session_approvals_one_waiting_per_agent ON session_approvals (agent_id) WHERE decided_at IS NULL;
CREATE INDEX session_approvals_tenant ON session_approvals (tenant_id, requested_at);
