-- Appends a group of independent append requests in one transaction (group commit), in one
-- round trip. Each request is one or more stream appends (rows of p_req with the same number,
-- consecutive); a request is stored wholly or not at all, and one request's conflict never
-- fails another.
--
-- Per stream append j the result is o_status[j]:
--   0 appended, o_version[j] is the stream's new version;
--   1 conflict, o_version[j] is the actual version;
--   2 some event id of the request is stored already (looked up for every request with
--     p_check_dups, else only for conflicting ones): the caller compares the stored events
--     to decide between the original result and a conflict;
--   3 not appended because another stream of the same request conflicted.
-- o_seq holds the sequence numbers of all inserted events in input order, o_tx the
-- transaction id they carry. p_channel, when set, is notified inside the transaction (the
-- store passes NULL and notifies after the commit instead, see writer.rs).
CREATE FUNCTION append_group(
    p_req            integer[],
    p_stream         text[],
    p_expected       bigint[],   -- -1 any version, -2 an existing stream, n >= 0 exactly n
    p_count          integer[],
    p_event_k        integer[],  -- per event: its stream append (1-based)
    p_event_pos      integer[],  -- per event: its place in that stream append (1-based)
    p_event_id       uuid[],
    p_event_type     text[],
    p_schema_version integer[],
    p_payload        text[],
    p_metadata       text[],
    p_check_dups     boolean,
    p_channel        text,
    p_delay          double precision,
    p_fail           boolean,
    OUT o_status     smallint[],
    OUT o_version    bigint[],
    OUT o_seq        bigint[],
    OUT o_tx         bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_n       integer := coalesce(array_length(p_stream, 1), 0);
    v_dup     integer[] := '{}';
    v_names   text[];
    v_vers    bigint[];
    v_exist   boolean[];
    v_changed boolean[];
    v_base    bigint[];
    v_ok      boolean[];
    v_k       integer := 1;
    v_last    integer;
    v_j       integer;
    v_idx     integer;
    v_actual  bigint;
    v_failed  boolean;
    v_first   integer := 1;  -- the request's first event
    v_events  integer;       -- the request's number of events
BEGIN
    -- Taken first: every event of this transaction carries it.
    o_tx := pg_current_xact_id()::text::bigint;
    o_status := array_fill(0::smallint, ARRAY[v_n]);
    o_version := array_fill(0::bigint, ARRAY[v_n]);
    v_base := array_fill(0::bigint, ARRAY[v_n]);
    v_ok := array_fill(false, ARRAY[v_n]);

    IF p_check_dups THEN
        SELECT coalesce(array_agg(DISTINCT p_req[u.k]), '{}') INTO v_dup
          FROM unnest(p_event_id, p_event_k) AS u(id, k)
         WHERE EXISTS (SELECT 1 FROM events e WHERE e.event_id = u.id);
    END IF;

    -- Lock every existing stream of the group, in one order, so groups never deadlock.
    SELECT coalesce(array_agg(s.stream_id), '{}'), coalesce(array_agg(s.version), '{}')
      INTO v_names, v_vers
      FROM (SELECT stream_id, version FROM streams
             WHERE stream_id = ANY (p_stream)
             ORDER BY stream_id FOR UPDATE) AS s;
    v_exist := array_fill(true, ARRAY[coalesce(array_length(v_names, 1), 0)]);
    v_changed := array_fill(false, ARRAY[coalesce(array_length(v_names, 1), 0)]);

    WHILE v_k <= v_n LOOP
        v_last := v_k;
        WHILE v_last < v_n AND p_req[v_last + 1] = p_req[v_k] LOOP
            v_last := v_last + 1;
        END LOOP;
        v_events := 0;
        FOR v_j IN v_k..v_last LOOP
            v_events := v_events + p_count[v_j];
        END LOOP;
        IF p_req[v_k] = ANY (v_dup) THEN
            FOR v_j IN v_k..v_last LOOP
                o_status[v_j] := 2;
            END LOOP;
        ELSE
            v_failed := false;
            FOR v_j IN v_k..v_last LOOP
                v_idx := array_position(v_names, p_stream[v_j]);
                IF v_idx IS NULL THEN
                    v_names := v_names || p_stream[v_j];
                    v_vers := v_vers || 0::bigint;
                    v_exist := v_exist || false;
                    v_changed := v_changed || false;
                    v_idx := array_length(v_names, 1);
                END IF;
                v_actual := v_vers[v_idx];
                o_version[v_j] := v_actual;
                IF NOT (p_expected[v_j] = -1
                        OR (p_expected[v_j] = -2 AND v_actual > 0)
                        OR p_expected[v_j] = v_actual) THEN
                    o_status[v_j] := 1;
                    v_failed := true;
                END IF;
            END LOOP;
            -- A conflicting request may be the retry of a stored one: the caller decides.
            IF v_failed AND NOT p_check_dups AND EXISTS (
                    SELECT 1 FROM events e
                     WHERE e.event_id = ANY (p_event_id[v_first:v_first + v_events - 1])) THEN
                FOR v_j IN v_k..v_last LOOP
                    o_status[v_j] := 2;
                END LOOP;
                v_failed := false;
                v_k := v_last + 1;
                v_first := v_first + v_events;
                CONTINUE;
            END IF;
            FOR v_j IN v_k..v_last LOOP
                IF v_failed THEN
                    IF o_status[v_j] = 0 THEN
                        o_status[v_j] := 3;
                    END IF;
                ELSE
                    v_idx := array_position(v_names, p_stream[v_j]);
                    v_base[v_j] := v_vers[v_idx];
                    v_vers[v_idx] := v_vers[v_idx] + p_count[v_j];
                    v_changed[v_idx] := true;
                    v_ok[v_j] := true;
                    o_version[v_j] := v_vers[v_idx];
                END IF;
            END LOOP;
        END IF;
        v_k := v_last + 1;
        v_first := v_first + v_events;
    END LOOP;

    -- New streams, in one order; a stream created meanwhile by another transaction is a
    -- unique violation, and the caller retries the whole group.
    INSERT INTO streams (stream_id, version)
    SELECT u.id, u.v
      FROM unnest(v_names, v_vers, v_exist, v_changed) AS u(id, v, e, c)
     WHERE u.c AND NOT u.e
     ORDER BY u.id;

    UPDATE streams AS s SET version = u.v
      FROM unnest(v_names, v_vers, v_exist, v_changed) AS u(id, v, e, c)
     WHERE u.c AND u.e AND s.stream_id = u.id;

    WITH inserted AS (
        INSERT INTO events (tx, stream_id, stream_version, event_id, event_type,
                            schema_version, payload, metadata)
        SELECT o_tx, p_stream[u.k], v_base[u.k] + u.pos, u.id, u.t, u.sv, u.p, u.m
          FROM unnest(p_event_k, p_event_pos, p_event_id, p_event_type, p_schema_version,
                      p_payload, p_metadata) AS u(k, pos, id, t, sv, p, m)
         WHERE v_ok[u.k]
        RETURNING sequence)
    SELECT coalesce(array_agg(i.sequence ORDER BY i.sequence), '{}') INTO o_seq FROM inserted AS i;

    IF p_channel IS NOT NULL AND cardinality(o_seq) > 0 THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
    -- Test hooks: hold the transaction open after the insert, or roll it back.
    IF p_delay > 0 THEN
        PERFORM pg_sleep(p_delay);
    END IF;
    IF p_fail THEN
        RAISE EXCEPTION 'append rolled back by a test hook';
    END IF;
END
$$;
