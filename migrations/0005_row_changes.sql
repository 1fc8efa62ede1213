-- Rows read on every request and changed rarely are cached in the server
-- (rowcache). Any change to them, on any node or by hand, is announced on
-- the argus_rows channel as "cache:id", or "cache:*" when every entry of
-- that cache may depend on it; a server evicts what it heard.
CREATE FUNCTION rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_NARGS > 1 AND TG_ARGV[1] = 'all' THEN
        PERFORM pg_notify('argus_rows', TG_ARGV[0] || ':*');
    ELSE
        PERFORM pg_notify('argus_rows', TG_ARGV[0] || ':' || OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER operator_tokens_changed AFTER UPDATE OR DELETE ON operator_tokens
    FOR EACH ROW EXECUTE FUNCTION rows_changed('operator_tokens');
CREATE TRIGGER operator_tokens_truncated AFTER TRUNCATE ON operator_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION rows_changed('operator_tokens', 'all');
-- A token's entry holds its operator's name and disabled state.
CREATE TRIGGER operators_changed AFTER UPDATE OR DELETE ON operators
    FOR EACH ROW EXECUTE FUNCTION rows_changed('operator_tokens', 'all');
CREATE TRIGGER operators_truncated AFTER TRUNCATE ON operators
    FOR EACH STATEMENT EXECUTE FUNCTION rows_changed('operator_tokens', 'all');

CREATE TRIGGER support_sessions_changed AFTER UPDATE OR DELETE ON support_sessions
    FOR EACH ROW EXECUTE FUNCTION rows_changed('support_sessions');
CREATE TRIGGER support_sessions_truncated AFTER TRUNCATE ON support_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION rows_changed('support_sessions', 'all');
