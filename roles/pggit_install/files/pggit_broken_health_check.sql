-- pggit.chaos test fixture: make pggit.health_check() fail the way pgGit
-- v0.2.1 does, with a bad format() specifier in its storage_size check, so
-- steady-state probes can be tested against it. The rows the real function
-- returns before that check do not matter: the whole call raises. Load after
-- pggit_fixture.sql; load pggit_fixture.sql again to restore the working one.

CREATE OR REPLACE FUNCTION pggit.health_check()
RETURNS TABLE (check_name text, status text, message text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    v_size bigint;
BEGIN
    -- The bug: %d is not a format() specifier (only %s, %I and %L are), so
    -- this raises "unrecognized format() type specifier "d"".
    v_size := pg_total_relation_size('pggit.history');
    check_name := 'storage_size';
    status := 'healthy';
    message := format('History table size: %d bytes', v_size);
    details := jsonb_build_object('history_bytes', v_size);
    RETURN NEXT;
END
$$;
