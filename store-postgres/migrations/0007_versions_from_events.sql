-- A stream's version is its newest event's, read from `events`; `streams` is no longer written.
--
-- Every append read and rewrote the stream's row in `streams` to check and move its version.
-- Under synchronous commit that read and write cost about a fifth of a one-event append's
-- server time (store-postgres/PERFORMANCE.md, "The version check is what the append pays
-- for"). Events are never updated or deleted, and the key on (stream_id, stream_version)
-- refuses a version that is taken, so the events themselves can keep the versions:
--
-- * An append reads its stream's newest version from `events` (the key's last entry for the
--   stream), with the stream's advisory lock held, and writes the versions after it. A read
--   that is older than the stream (a single statement's snapshot predates a commit it waited
--   for on the lock) can only be lower than the truth, so the key refuses the insert: nothing
--   is written, and the store asks `append_group`, whose statements each take a new snapshot
--   after the locks.
-- * An append whose expected version n the store has seen in `events` itself (a load, or an
--   append it made) skips the read (single.rs): version n exists for ever, so writing n + 1
--   either continues the stream or is refused by the key.
--
-- The stream locks stay, taken before the transaction's id as before (0003, 0006): they keep
-- each stream's events in log order and keep two appends of one stream from racing.
--
-- `streams` stays, unread and unwritten, so a binary from before this migration still appends
-- correctly: its statements check against a row that may be behind, and any version they
-- compute from it is either right or taken (the key refuses it and `append_group`, replaced
-- here, answers). Its rows are not kept current and are not to be trusted (such a binary's
-- stream_version() reads them): every process of a store upgrades together.

-- One append to one stream (0005), its version read from `events`.
CREATE OR REPLACE FUNCTION append_stream(
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
DECLARE
    v_actual bigint;
BEGIN
    -- First, before anything takes the transaction's id (see 0003_stream_order.sql).
    PERFORM pg_advisory_xact_lock_shared(stream_lock_key(''));
    PERFORM pg_advisory_xact_lock(stream_lock_key(p_stream));
    -- A statement of its own: its snapshot is taken with the lock held.
    SELECT e.stream_version INTO v_actual FROM events AS e
     WHERE e.stream_id = p_stream ORDER BY e.stream_version DESC LIMIT 1;
    v_actual := coalesce(v_actual, 0);
    IF NOT (p_expected = -1 OR (p_expected = -2 AND v_actual > 0) OR p_expected = v_actual) THEN
        o_seq := '{}';
        o_tx := 0;
        RETURN;
    END IF;
    o_version := v_actual + p_count;
    o_tx := pg_current_xact_id()::text::bigint;
    WITH ins AS (
        INSERT INTO events (tx, stream_id, stream_version, event_id, event_type,
                            schema_version, payload, metadata)
        SELECT o_tx, p_stream, v_actual + u.pos, u.id, u.t, u.sv, u.p, u.m
          FROM unnest(p_id, p_type, p_sv, p_payload, p_metadata)
               WITH ORDINALITY AS u(id, t, sv, p, m, pos)
        RETURNING sequence)
    SELECT coalesce(array_agg(ins.sequence ORDER BY ins.sequence), '{}') INTO o_seq FROM ins;
END
$$;

-- The group statement (0005, batch.rs), its versions read from `events` once the locks are
-- held. A call whose check fails writes nothing and is left out of the answer.
CREATE OR REPLACE FUNCTION append_batch(
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
    -- First, before anything takes the transaction's id; a statement of its own, so the
    -- next one's snapshot sees every append the locks waited for.
    PERFORM lock_streams(p_stream);
    WITH a AS (SELECT u.stream, u.expected, u.n, u.k,
                      coalesce((SELECT e.stream_version FROM events AS e
                                 WHERE e.stream_id = u.stream
                                 ORDER BY e.stream_version DESC LIMIT 1), 0) AS cur
                 FROM unnest(p_stream, p_expected, p_count) WITH ORDINALITY
                   AS u(stream, expected, n, k)),
    w AS (SELECT a.k, a.cur + a.n AS version FROM a
           WHERE a.expected = -1 OR (a.expected = -2 AND a.cur > 0) OR a.expected = a.cur),
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

-- The group append of 0002 (run by append_group once lock_streams holds its streams), its
-- versions read from `events` and `streams` no longer written; otherwise unchanged.
CREATE OR REPLACE FUNCTION append_group_held(
    p_req            integer[],
    p_stream         text[],
    p_expected       bigint[],
    p_count          integer[],
    p_event_k        integer[],
    p_event_pos      integer[],
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

    -- Every stream of the group that has events, at its newest version (its locks are held).
    SELECT coalesce(array_agg(s.id), '{}'), coalesce(array_agg(s.v), '{}')
      INTO v_names, v_vers
      FROM (SELECT u.id,
                   (SELECT e.stream_version FROM events AS e WHERE e.stream_id = u.id
                     ORDER BY e.stream_version DESC LIMIT 1) AS v
              FROM (SELECT DISTINCT unnest(p_stream) AS id) AS u) AS s
     WHERE s.v IS NOT NULL;

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
                    v_ok[v_j] := true;
                    o_version[v_j] := v_vers[v_idx];
                END IF;
            END LOOP;
        END IF;
        v_k := v_last + 1;
        v_first := v_first + v_events;
    END LOOP;

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

-- CREATE OR REPLACE keeps owners and grants but not the rest: the writing functions run as
-- their owner again, with this schema first and pg_temp last (as 0005 set them).
DO $$
DECLARE
    v_path text := format('%I, pg_temp', current_schema());
    v_fn   text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'append_stream(text, bigint, bigint, uuid[], text[], integer[], text[], text[])',
        'append_batch(text[], bigint[], integer[], integer[], integer[], uuid[], text[], '
            'integer[], text[], text[])']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %s', v_fn, v_path);
    END LOOP;
END
$$;
