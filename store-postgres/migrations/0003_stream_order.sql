-- Keeps each stream's order in the global log.
--
-- An event's place in the log is its transaction id, and a transaction takes its id at its
-- first write or row lock (or at pg_current_xact_id()). append_group took its id first and
-- locked its streams after: a group that waited for a stream held by another transaction
-- could then write the next version of a second stream under an older id than a version of
-- that stream written meanwhile, and the log showed the stream's versions out of order.
--
-- Now every append first takes one advisory lock per stream (an advisory lock takes no
-- transaction id), all in one order, and only then its id (lock_streams below). An append to
-- a stream so takes its id after the previous append to that stream has committed: ids, and
-- with them the log, follow each stream's versions. The one-statement append of a single
-- stream (single.rs) takes the same locks first.

-- The advisory lock key of a stream, seeded with the events table's oid so the streams of two
-- stores in one database never share a key.
CREATE FUNCTION stream_lock_key(p_stream text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(p_stream, 'events'::regclass::oid::bigint)
$$;

-- Holds the streams until the transaction ends. An append of up to 128 streams takes the
-- log's lock shared (the key of '', a name no stream can have), then each stream's key in
-- ascending order, so two appends never wait for each other in a cycle. A larger one takes
-- the log's lock alone, exclusively, instead: it then waits for every other append and keeps
-- the lock table small (each advisory lock is an entry there, row locks are not).
CREATE FUNCTION lock_streams(p_streams text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_keys bigint[];
BEGIN
    SELECT coalesce(array_agg(k ORDER BY k), '{}') INTO v_keys
      FROM (SELECT DISTINCT stream_lock_key(s) AS k FROM unnest(p_streams) AS s) AS keys;
    IF cardinality(v_keys) > 128 THEN
        PERFORM pg_advisory_xact_lock(stream_lock_key(''));
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(stream_lock_key(''));
    -- One statement for all keys. An output expression not named in ORDER BY is evaluated
    -- after the sort (the SELECT reference says so), so the keys are locked in order.
    PERFORM pg_advisory_xact_lock(u.k)
       FROM unnest(v_keys) WITH ORDINALITY AS u(k, i)
      ORDER BY u.i;
END
$$;

-- The group append of 0002, unchanged, now run only with its streams held.
ALTER FUNCTION append_group(integer[], text[], bigint[], integer[], integer[], integer[],
                            uuid[], text[], integer[], text[], text[], boolean, text,
                            double precision, boolean)
    RENAME TO append_group_held;

CREATE FUNCTION append_group(
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
BEGIN
    -- First, before anything takes the transaction's id.
    PERFORM lock_streams(p_stream);
    SELECT h.o_status, h.o_version, h.o_seq, h.o_tx
      INTO o_status, o_version, o_seq, o_tx
      FROM append_group_held(p_req, p_stream, p_expected, p_count, p_event_k, p_event_pos,
                             p_event_id, p_event_type, p_schema_version, p_payload,
                             p_metadata, p_check_dups, p_channel, p_delay, p_fail) AS h;
END
$$;
