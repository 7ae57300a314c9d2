-- Least privilege: every write of an append runs inside a function owned by the role that
-- migrates (SECURITY DEFINER), so an application role needs only EXECUTE on these functions
-- and SELECT on the tables. It can then append and read through the store's normal path, and
-- cannot UPDATE, DELETE or TRUNCATE events, drop or disable the triggers, change `streams`
-- rows, or INSERT events itself (a row with a forged `tx` would sort before every follower's
-- checkpoint, and no follower would ever see it). `grant_app_role` below makes such a role.
--
-- The one-stream statement (single.rs) and the group statement (batch.rs) were plain SQL
-- sent by the client; they are these functions now, doing the same in the same order (the
-- stream's advisory locks first, before anything takes the transaction's id), in the same one
-- round trip.

-- One append to one stream. p_expected: -1 any version, 0 a new stream, -2 an existing
-- stream, n > 0 exactly n. Writes nothing and returns a NULL version when the check fails or
-- the stream exists already for a new-stream append; an event id stored already raises a
-- unique violation (nothing written). The caller then asks append_group, which answers.
CREATE FUNCTION append_stream(
    p_stream     text,
    p_count      bigint,
    p_expected   bigint,
    p_id         uuid[],
    p_type       text[],
    p_sv         integer[],
    p_payload    text[],
    p_metadata   text[],
    OUT o_version bigint,
    OUT o_seq     bigint[],
    OUT o_tx      bigint)
LANGUAGE plpgsql AS $$
BEGIN
    -- First, before anything takes the transaction's id (see 0003_stream_order.sql).
    PERFORM pg_advisory_xact_lock_shared(stream_lock_key(''));
    PERFORM pg_advisory_xact_lock(stream_lock_key(p_stream));
    IF p_expected = -1 THEN
        INSERT INTO streams AS st (stream_id, version) VALUES (p_stream, p_count)
            ON CONFLICT (stream_id) DO UPDATE SET version = st.version + p_count
            RETURNING st.version INTO o_version;
    ELSIF p_expected = 0 THEN
        INSERT INTO streams AS st (stream_id, version) VALUES (p_stream, p_count)
            ON CONFLICT (stream_id) DO NOTHING
            RETURNING st.version INTO o_version;
    ELSE
        UPDATE streams AS st SET version = st.version + p_count
         WHERE st.stream_id = p_stream AND (p_expected = -2 OR st.version = p_expected)
        RETURNING st.version INTO o_version;
    END IF;
    IF o_version IS NULL THEN
        o_seq := '{}';
        o_tx := 0;
        RETURN;
    END IF;
    o_tx := pg_current_xact_id()::text::bigint;
    WITH ins AS (
        INSERT INTO events (tx, stream_id, stream_version, event_id, event_type,
                            schema_version, payload, metadata)
        SELECT o_tx, p_stream, o_version - p_count + u.pos, u.id, u.t, u.sv, u.p, u.m
          FROM unnest(p_id, p_type, p_sv, p_payload, p_metadata)
               WITH ORDINALITY AS u(id, t, sv, p, m, pos)
        RETURNING sequence)
    SELECT coalesce(array_agg(ins.sequence ORDER BY ins.sequence), '{}') INTO o_seq FROM ins;
END
$$;

-- The group statement of batch.rs, unchanged but for its parameters' names: a group of calls
-- each to a stream of its own, judged and stored at once; see batch.rs for how it works.
CREATE FUNCTION append_batch(
    p_stream     text[],
    p_expected   bigint[],
    p_count      integer[],
    p_event_k    integer[],
    p_event_pos  integer[],
    p_event_id   uuid[],
    p_event_type text[],
    p_sv         integer[],
    p_payload    text[],
    p_metadata   text[],
    OUT o_k       bigint[],
    OUT o_version bigint[],
    OUT o_seq     bigint[],
    OUT o_tx      bigint)
LANGUAGE plpgsql AS $$
BEGIN
    WITH g AS (SELECT pg_advisory_xact_lock_shared(stream_lock_key(''))),
    l AS (SELECT count(pg_advisory_xact_lock(o.k)) AS n
            FROM (SELECT stream_lock_key(s) AS k FROM g, unnest(p_stream) AS s
                   ORDER BY 1 OFFSET 0) AS o),
    a AS (SELECT u.stream, u.expected, u.n, u.k
            FROM l, unnest(p_stream, p_expected, p_count) WITH ORDINALITY
              AS u(stream, expected, n, k)),
    upd AS (UPDATE streams AS st SET version = st.version + a.n FROM a
             WHERE st.stream_id = ANY (p_stream) AND st.stream_id = a.stream
               AND (a.expected IN (-1, -2) OR st.version = a.expected)
            RETURNING a.k, st.version),
    ins AS (INSERT INTO streams AS st (stream_id, version)
            SELECT a.stream, a.n FROM a WHERE a.expected IN (-1, 0)
            ON CONFLICT (stream_id) DO NOTHING RETURNING st.stream_id, st.version),
    w AS (SELECT upd.k, upd.version FROM upd
          UNION ALL SELECT a.k, ins.version FROM ins JOIN a ON a.stream = ins.stream_id),
    ev AS (INSERT INTO events (tx, stream_id, stream_version, event_id, event_type,
                               schema_version, payload, metadata)
           SELECT pg_current_xact_id()::text::bigint, a.stream, w.version - a.n + e.pos,
                  e.id, e.t, e.sv, e.p, e.m
             FROM unnest(p_event_k, p_event_pos, p_event_id, p_event_type, p_sv, p_payload,
                         p_metadata) AS e(k, pos, id, t, sv, p, m)
             JOIN w ON w.k = e.k JOIN a ON a.k = e.k
            ORDER BY e.k, e.pos
           RETURNING events.sequence, events.tx)
    SELECT (SELECT coalesce(array_agg(w.k ORDER BY w.k), '{}') FROM w),
           (SELECT coalesce(array_agg(w.version ORDER BY w.k), '{}') FROM w),
           (SELECT coalesce(array_agg(ev.sequence ORDER BY ev.sequence), '{}') FROM ev),
           (SELECT coalesce(min(ev.tx), 0) FROM ev)
      INTO o_k, o_version, o_seq, o_tx;
END
$$;

-- The writing functions run as their owner, with this schema first and pg_temp last (a
-- caller's temporary tables never stand in for the store's), and only for roles granted them.
DO $$
DECLARE
    v_path text := format('%I, pg_temp', current_schema());
    v_fn   text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'append_stream(text, bigint, bigint, uuid[], text[], integer[], text[], text[])',
        'append_batch(text[], bigint[], integer[], integer[], integer[], uuid[], text[], '
            'integer[], text[], text[])',
        'append_group(integer[], text[], bigint[], integer[], integer[], integer[], uuid[], '
            'text[], integer[], text[], text[], boolean, text, double precision, boolean)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %s', v_fn, v_path);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END
$$;

-- Lets p_role append and read this store, and nothing more: run by the owner (the role that
-- migrates), for an existing role (CREATE ROLE app LOGIN ...). The role also needs CONNECT on
-- the database, which PUBLIC has by default.
CREATE FUNCTION grant_app_role(p_role text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), p_role);
    EXECUTE format('GRANT SELECT ON events, streams, snapshots, store_info TO %I', p_role);
    -- Snapshots are a cache the application writes; events and streams are not.
    EXECUTE format('GRANT INSERT, UPDATE ON snapshots TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
        'append_stream(text, bigint, bigint, uuid[], text[], integer[], text[], text[]), '
        'append_batch(text[], bigint[], integer[], integer[], integer[], uuid[], text[], '
            'integer[], text[], text[]), '
        'append_group(integer[], text[], bigint[], integer[], integer[], integer[], uuid[], '
            'text[], integer[], text[], text[], boolean, text, double precision, boolean) '
        'TO %I', p_role);
END
$$;

REVOKE EXECUTE ON FUNCTION grant_app_role(text) FROM PUBLIC;
