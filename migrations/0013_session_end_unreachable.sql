-- An activation whose agent's node did not open it (it gave no answer, or
-- no longer held the agent) ends agent_unreachable, not as one the agent
-- was handed and left unacknowledged.
ALTER TABLE support_sessions DROP CONSTRAINT support_sessions_end_reason_check;
ALTER TABLE support_sessions ADD CONSTRAINT support_sessions_end_reason_check CHECK (end_reason IN ('deactivated', 'expired',
    'agent_kill_switch', 'tenant_disarmed', 'consent_withdrawn', 'agent_revoked', 'agent_did_not_acknowledge', 'tenant_ended',
    'agent_unreachable'));
