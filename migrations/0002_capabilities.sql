-- The newest capability data an agent reported through get_capabilities.
-- Advisory, like the manifest: never used to authorize anything.
ALTER TABLE agents
    ADD COLUMN capabilities    jsonb,
    ADD COLUMN capabilities_at timestamptz;
