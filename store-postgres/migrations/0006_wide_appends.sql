-- Appends of many streams no longer stall every other append.
--
-- lock_streams (0003_stream_order.sql) took the log's lock exclusively for an append of more
-- than 128 streams, so such an append waited for every append in flight and held every other
-- one back until it committed: with 200-stream appends running, one-stream appends ran at a
-- fifth of their rate. Now it locks each stream's key, in ascending order, up to 1,000
-- streams; only beyond that does it take the log's lock alone, exclusively (each advisory
-- lock is an entry in the server's shared lock table, max_locks_per_transaction x
-- max_connections entries, 6,400 by default, which one append must not exhaust).
--
-- Deadlock freedom is unchanged: every append takes the log's lock first (shared, or
-- exclusive and then nothing else), then its streams' keys in one global order, ascending,
-- so no two appends ever wait for each other in a cycle. An append still takes its
-- transaction id only once it holds every stream it writes, so the log keeps each stream's
-- order.
CREATE OR REPLACE FUNCTION lock_streams(p_streams text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_keys bigint[];
BEGIN
    SELECT coalesce(array_agg(k ORDER BY k), '{}') INTO v_keys
      FROM (SELECT DISTINCT stream_lock_key(s) AS k FROM unnest(p_streams) AS s) AS keys;
    IF cardinality(v_keys) > 1000 THEN
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
