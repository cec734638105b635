-- pggit.chaos test fixture: make pggit.health_check() fail the way pgGit
-- v0.2.1 does, with a bad format() specifier in its storage_size check, so
-- steady-state probes can be tested against it. Load after pggit_fixture.sql;
-- load pggit_fixture.sql again to restore the working version.

CREATE OR REPLACE FUNCTION pggit.health_check()
RETURNS TABLE (check_name text, status text, message text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    v_count bigint;
    v_size  bigint;
BEGIN
    SELECT count(*) INTO v_count
    FROM pg_event_trigger
    WHERE evtname LIKE 'pggit%' AND evtenabled <> 'D';
    check_name := 'event_triggers';
    status := CASE WHEN v_count >= 2 THEN 'healthy' ELSE 'unhealthy' END;
    message := format('%s pgGit event triggers enabled', v_count);
    details := jsonb_build_object('enabled_triggers', v_count);
    RETURN NEXT;

    SELECT count(*) INTO v_count
    FROM pggit.history
    WHERE created_at > LOCALTIMESTAMP - interval '1 hour';
    check_name := 'recent_activity';
    status := CASE WHEN v_count > 0 THEN 'healthy' ELSE 'warning' END;
    message := format('%s changes in the last hour', v_count);
    details := jsonb_build_object('changes_last_hour', v_count);
    RETURN NEXT;

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
