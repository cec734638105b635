-- pggit.chaos test fixture: a small stand-in for pgGit.
--
-- Written for this collection from the contract in pggit-contract.md; it is
-- not pgGit's code. It provides the objects and the behaviour the chaos
-- collection relies on (schema, enums, objects/history tables, DDL and drop
-- event triggers, health_check()) so tests can run without a pgGit checkout.
--
-- Safe to run again: everything is CREATE ... IF NOT EXISTS, CREATE OR
-- REPLACE, or guarded by a catalog check. Event triggers are created last, so
-- the fixture never records its own objects; the handlers also skip the
-- pggit schema, temporary objects and extension members.

SET client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS pggit;

DO $fixture$
BEGIN
    IF to_regtype('pggit.change_type') IS NULL THEN
        CREATE TYPE pggit.change_type AS ENUM (
            'CREATE', 'ALTER', 'DROP', 'RENAME', 'COMMENT',
            'BRANCH', 'MERGE', 'CONFLICT_RESOLVED');
    END IF;
    IF to_regtype('pggit.change_severity') IS NULL THEN
        CREATE TYPE pggit.change_severity AS ENUM ('MAJOR', 'MINOR', 'PATCH');
    END IF;
    IF to_regtype('pggit.object_type') IS NULL THEN
        CREATE TYPE pggit.object_type AS ENUM (
            'SCHEMA', 'TABLE', 'COLUMN', 'INDEX', 'CONSTRAINT', 'VIEW',
            'MATERIALIZED_VIEW', 'FUNCTION', 'PROCEDURE', 'TRIGGER', 'TYPE',
            'SEQUENCE', 'PARTITION', 'BRANCH', 'COMMIT', 'TAG');
    END IF;
END
$fixture$;

CREATE TABLE IF NOT EXISTS pggit.objects (
    id             serial PRIMARY KEY,
    object_type    pggit.object_type NOT NULL,
    schema_name    text NOT NULL,
    object_name    text NOT NULL,
    full_name      text GENERATED ALWAYS AS (schema_name || '.' || object_name) STORED,
    parent_id      integer REFERENCES pggit.objects (id),
    content_hash   text,
    ddl_normalized text,
    branch_name    text NOT NULL DEFAULT 'main',
    version        integer NOT NULL DEFAULT 1,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_active      boolean NOT NULL DEFAULT true,
    created_at     timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at     timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (object_type, schema_name, object_name, branch_name)
);

CREATE TABLE IF NOT EXISTS pggit.history (
    id                 serial PRIMARY KEY,
    object_id          integer NOT NULL REFERENCES pggit.objects (id) ON DELETE CASCADE,
    change_type        pggit.change_type NOT NULL,
    change_severity    pggit.change_severity NOT NULL,
    commit_hash        text,
    branch_id          integer,
    old_version        integer,
    new_version        integer,
    old_metadata       jsonb,
    new_metadata       jsonb,
    change_description text,
    sql_executed       text,
    created_at         timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
    created_by         text NOT NULL DEFAULT CURRENT_USER
);

CREATE INDEX IF NOT EXISTS history_object_id_idx ON pggit.history (object_id);
CREATE INDEX IF NOT EXISTS history_created_at_idx ON pggit.history (created_at);

CREATE TABLE IF NOT EXISTS pggit.monitoring_metrics (
    id           serial PRIMARY KEY,
    metric_name  text NOT NULL,
    metric_value numeric NOT NULL,
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at  timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Map an event-trigger object_type (as printed by pg_event_trigger_*) to
-- pggit.object_type; NULL means "not tracked".
CREATE OR REPLACE FUNCTION pggit._tracked_type(p_kind text)
RETURNS pggit.object_type
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
    SELECT CASE p_kind
        WHEN 'table' THEN 'TABLE'
        WHEN 'view' THEN 'VIEW'
        WHEN 'materialized view' THEN 'MATERIALIZED_VIEW'
        WHEN 'index' THEN 'INDEX'
        WHEN 'sequence' THEN 'SEQUENCE'
        WHEN 'function' THEN 'FUNCTION'
        WHEN 'procedure' THEN 'PROCEDURE'
        WHEN 'schema' THEN 'SCHEMA'
        WHEN 'type' THEN 'TYPE'
        WHEN 'composite type' THEN 'TYPE'
        WHEN 'trigger' THEN 'TRIGGER'
        WHEN 'table constraint' THEN 'CONSTRAINT'
    END::pggit.object_type
$$;

-- Split an object identity into (schema, name). The schema of a SCHEMA is
-- its own name, so the UNIQUE key never holds a NULL.
CREATE OR REPLACE FUNCTION pggit._split_identity(
    p_kind text, p_schema text, p_identity text,
    OUT schema_name text, OUT object_name text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog
AS $$
BEGIN
    IF p_kind = 'schema' OR p_schema IS NULL THEN
        schema_name := coalesce(p_schema, p_identity);
        object_name := p_identity;
    ELSIF position(quote_ident(p_schema) || '.' IN p_identity) = 1 THEN
        schema_name := p_schema;
        object_name := substr(p_identity, length(quote_ident(p_schema)) + 2);
        -- unquote simple quoted names such as "MyTable"
        IF object_name ~ '^"[^"]*"$' THEN
            object_name := substr(object_name, 2, length(object_name) - 2);
        END IF;
    ELSE
        schema_name := p_schema;
        object_name := p_identity;
    END IF;
END
$$;

-- How many of our tracking handlers fire for p_event in this session. Event
-- triggers with evtenabled O fire unless session_replication_role is
-- replica, R only when it is, A always; D never.
CREATE OR REPLACE FUNCTION pggit._firing_handlers(p_event text)
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT count(*)::integer
    FROM pg_event_trigger t
    WHERE t.evtevent = p_event
      AND t.evtfoid::regprocedure::text IN (
          'pggit.handle_ddl_command()',
          'pggit.handle_enhanced_ddl_command()',
          'pggit.handle_sql_drop()',
          'pggit.handle_enhanced_sql_drop()')
      AND CASE t.evtenabled
              WHEN 'A' THEN true
              WHEN 'R' THEN current_setting('session_replication_role') = 'replica'
              WHEN 'O' THEN current_setting('session_replication_role') <> 'replica'
              ELSE false
          END
$$;

-- Per-statement dedupe across several handlers of the same event. The first
-- handler to see an object records it and leaves a marker saying how many
-- other handlers will still fire; each of those consumes one unit and skips.
-- The marker lives in a transaction-local setting keyed on txid, statement
-- and object, so it vanishes at COMMIT/ROLLBACK and with a rolled back
-- subtransaction.
CREATE OR REPLACE FUNCTION pggit._claim(p_event text, p_object text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    v_key    text := txid_current()::text || ':' || md5(coalesce(current_query(), ''))
                     || ':' || p_event || ':' || p_object;
    v_marker jsonb := coalesce(nullif(current_setting('pggit.dedupe_marker', true), ''), '{}')::jsonb;
    v_left   integer;
BEGIN
    IF v_marker ? v_key THEN
        v_left := (v_marker ->> v_key)::integer - 1;
        IF v_left > 0 THEN
            v_marker := jsonb_set(v_marker, ARRAY[v_key], to_jsonb(v_left));
        ELSE
            v_marker := v_marker - v_key;
        END IF;
        PERFORM set_config('pggit.dedupe_marker', v_marker::text, true);
        RETURN false;
    END IF;
    v_left := pggit._firing_handlers(p_event) - 1;
    IF v_left > 0 THEN
        v_marker := v_marker || jsonb_build_object(v_key, v_left);
        PERFORM set_config('pggit.dedupe_marker', v_marker::text, true);
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION pggit._record(
    p_type pggit.object_type, p_schema text, p_name text,
    p_change pggit.change_type, p_severity pggit.change_severity,
    p_description text, p_metadata jsonb, p_active boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    v_id       integer;
    v_version  integer;
    v_old      jsonb;
    v_inserted boolean;
BEGIN
    SELECT o.metadata INTO v_old
    FROM pggit.objects o
    WHERE o.object_type = p_type AND o.schema_name = p_schema
      AND o.object_name = p_name AND o.branch_name = 'main';

    INSERT INTO pggit.objects AS o
        (object_type, schema_name, object_name, branch_name, version, metadata,
         is_active, content_hash, ddl_normalized)
    VALUES (p_type, p_schema, p_name, 'main', 1, p_metadata, p_active,
            md5(coalesce(current_query(), '')), current_query())
    ON CONFLICT (object_type, schema_name, object_name, branch_name) DO UPDATE
        SET version = o.version + 1,
            metadata = EXCLUDED.metadata,
            is_active = EXCLUDED.is_active,
            content_hash = EXCLUDED.content_hash,
            ddl_normalized = EXCLUDED.ddl_normalized,
            updated_at = CURRENT_TIMESTAMP
    RETURNING o.id, o.version, (o.xmax = 0) INTO v_id, v_version, v_inserted;

    INSERT INTO pggit.history
        (object_id, change_type, change_severity, commit_hash, old_version,
         new_version, old_metadata, new_metadata, change_description,
         sql_executed, created_by)
    VALUES (v_id, p_change, p_severity,
            md5(txid_current()::text || ':' || v_id || ':' || v_version),
            CASE WHEN v_inserted THEN NULL ELSE v_version - 1 END,
            v_version, v_old, p_metadata, p_description, current_query(),
            session_user);
END
$$;

CREATE OR REPLACE FUNCTION pggit._track_ddl(p_source text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    r        record;
    v_type   pggit.object_type;
    v_change pggit.change_type;
    v_sev    pggit.change_severity;
    v_seen   text[] := '{}';
    v_key    text;
BEGIN
    FOR r IN
        SELECT c.*, s.schema_name AS s_schema, s.object_name AS s_name
        FROM pg_event_trigger_ddl_commands() c
        CROSS JOIN LATERAL pggit._split_identity(c.object_type, c.schema_name,
                                                 c.object_identity) s
        WHERE NOT c.in_extension
    LOOP
        v_type := pggit._tracked_type(r.object_type);
        CONTINUE WHEN v_type IS NULL;
        CONTINUE WHEN r.s_schema = 'pggit' OR r.s_schema LIKE 'pg\_temp%'
                   OR r.s_schema LIKE 'pg\_toast%';
        -- one history row per object and statement, even when the statement
        -- reports the object twice (CREATE TABLE ... serial also ALTERs the
        -- sequence it created)
        v_key := v_type::text || ':' || r.s_schema || ':' || r.s_name;
        CONTINUE WHEN v_key = ANY (v_seen);
        v_seen := v_seen || v_key;
        CONTINUE WHEN NOT pggit._claim('ddl_command_end', v_key);

        IF r.command_tag LIKE 'CREATE%' THEN
            v_change := 'CREATE'; v_sev := 'MINOR';
        ELSIF r.command_tag LIKE 'COMMENT%' THEN
            v_change := 'COMMENT'; v_sev := 'PATCH';
        ELSIF r.command_tag LIKE 'ALTER%' AND current_query() ~* '\mrename\M' THEN
            v_change := 'RENAME'; v_sev := 'MAJOR';
        ELSIF r.command_tag LIKE 'GRANT%' OR r.command_tag LIKE 'REVOKE%' THEN
            v_change := 'ALTER'; v_sev := 'PATCH';
        ELSE
            v_change := 'ALTER'; v_sev := 'MINOR';
        END IF;

        PERFORM pggit._record(
            v_type, r.s_schema, r.s_name, v_change, v_sev,
            format('%s %s %s', r.command_tag, r.object_type, r.object_identity),
            jsonb_build_object('command_tag', r.command_tag,
                               'object_identity', r.object_identity,
                               'objid', r.objid, 'source', p_source),
            true);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION pggit._track_drop(p_source text, p_tag text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    r      record;
    v_type pggit.object_type;
    v_key  text;
BEGIN
    FOR r IN
        SELECT d.*, s.schema_name AS s_schema, s.object_name AS s_name
        FROM pg_event_trigger_dropped_objects() d
        CROSS JOIN LATERAL pggit._split_identity(d.object_type, d.schema_name,
                                                 d.object_identity) s
        WHERE NOT d.is_temporary
    LOOP
        v_type := pggit._tracked_type(r.object_type);
        CONTINUE WHEN v_type IS NULL;
        CONTINUE WHEN r.s_schema = 'pggit' OR r.s_schema LIKE 'pg\_temp%'
                   OR r.s_schema LIKE 'pg\_toast%';
        IF NOT r.original THEN
            -- dropped along with something else (an index with its table):
            -- no history row of its own, but no longer active either
            UPDATE pggit.objects
               SET is_active = false, updated_at = CURRENT_TIMESTAMP
             WHERE object_type = v_type AND schema_name = r.s_schema
               AND object_name = r.s_name AND branch_name = 'main'
               AND is_active;
            CONTINUE;
        END IF;
        v_key := v_type::text || ':' || r.s_schema || ':' || r.s_name;
        CONTINUE WHEN NOT pggit._claim('sql_drop', v_key);
        PERFORM pggit._record(
            v_type, r.s_schema, r.s_name, 'DROP', 'MAJOR',
            format('%s %s %s', p_tag, r.object_type, r.object_identity),
            jsonb_build_object('object_identity', r.object_identity,
                               'objid', r.objid, 'source', p_source),
            false);
    END LOOP;
END
$$;

-- Event trigger handlers. SECURITY DEFINER so DDL by any role is recorded
-- even when that role cannot write to the pggit tables.
CREATE OR REPLACE FUNCTION pggit.handle_ddl_command()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM pggit._track_ddl('pggit_ddl_trigger');
END
$$;

CREATE OR REPLACE FUNCTION pggit.handle_enhanced_ddl_command()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM pggit._track_ddl('pggit_enhanced_ddl_trigger');
END
$$;

CREATE OR REPLACE FUNCTION pggit.handle_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM pggit._track_drop('pggit_drop_trigger', TG_TAG);
END
$$;

CREATE OR REPLACE FUNCTION pggit.handle_enhanced_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM pggit._track_drop('pggit_enhanced_drop_trigger', TG_TAG);
END
$$;

-- One metric row per tracked DDL statement, for the metrics_collection check.
CREATE OR REPLACE FUNCTION pggit.handle_ddl_metrics()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $$
DECLARE
    v_count integer;
BEGIN
    SELECT count(*) INTO v_count
    FROM pg_event_trigger_ddl_commands() c
    WHERE NOT c.in_extension
      AND pggit._tracked_type(c.object_type) IS NOT NULL
      AND coalesce(c.schema_name, '') <> 'pggit'
      AND coalesce(c.schema_name, '') NOT LIKE 'pg\_temp%'
      AND c.object_identity <> 'pggit';
    IF v_count > 0 THEN
        INSERT INTO pggit.monitoring_metrics (metric_name, metric_value, labels)
        VALUES ('ddl_commands', v_count, jsonb_build_object('command_tag', TG_TAG));
    END IF;
END
$$;

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
    status := CASE WHEN v_count >= 2 THEN 'healthy'
                   WHEN v_count = 1 THEN 'unhealthy'
                   ELSE 'critical' END;
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

    v_size := pg_total_relation_size('pggit.history');
    check_name := 'storage_size';
    status := CASE WHEN v_size < 1024::bigint * 1024 * 1024 THEN 'healthy'
                   ELSE 'warning' END;
    message := format('History table size: %s', pg_size_pretty(v_size));
    details := jsonb_build_object('history_bytes', v_size);
    RETURN NEXT;

    SELECT count(*) INTO v_count FROM pggit.objects WHERE is_active;
    check_name := 'object_count';
    status := 'healthy';
    message := format('%s active objects tracked', v_count);
    details := jsonb_build_object('active_objects', v_count);
    RETURN NEXT;

    SELECT count(*) INTO v_count
    FROM pggit.monitoring_metrics
    WHERE recorded_at > LOCALTIMESTAMP - interval '1 hour';
    check_name := 'metrics_collection';
    status := CASE WHEN v_count > 0 THEN 'healthy' ELSE 'warning' END;
    message := format('%s metrics recorded in the last hour', v_count);
    details := jsonb_build_object('metrics_last_hour', v_count);
    RETURN NEXT;
END
$$;

-- Event triggers last, so nothing above is recorded. A re-run re-enables
-- triggers someone disabled (a failed tracking probe is why it re-runs).
DO $fixture$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('pggit_ddl_trigger', 'ddl_command_end', 'pggit.handle_ddl_command'),
            ('pggit_drop_trigger', 'sql_drop', 'pggit.handle_sql_drop'),
            ('pggit_enhanced_ddl_trigger', 'ddl_command_end', 'pggit.handle_enhanced_ddl_command'),
            ('pggit_enhanced_drop_trigger', 'sql_drop', 'pggit.handle_enhanced_sql_drop'),
            ('pggit_metrics_trigger', 'ddl_command_end', 'pggit.handle_ddl_metrics')
        ) AS v (name, event, func)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = t.name) THEN
            EXECUTE format('CREATE EVENT TRIGGER %I ON %s EXECUTE FUNCTION %s()',
                           t.name, t.event, t.func);
        ELSIF EXISTS (SELECT 1 FROM pg_event_trigger
                      WHERE evtname = t.name AND evtenabled = 'D') THEN
            EXECUTE format('ALTER EVENT TRIGGER %I ENABLE', t.name);
        END IF;
    END LOOP;
END
$fixture$;
