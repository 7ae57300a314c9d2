-- The event log, the stream versions and the snapshots of one Annals store.
-- Every name is unqualified: the store sets search_path to its own schema on each connection.

CREATE TABLE events (
    -- Unique, increasing number of the event; drawn at insert time, so it can become
    -- visible out of order. Readers order by (tx, sequence), never by sequence alone.
    sequence       bigint GENERATED ALWAYS AS IDENTITY,
    -- The appending transaction's id (pg_current_xact_id() as bigint). A reader only sees
    -- events whose tx is below the oldest transaction still running.
    tx             bigint      NOT NULL,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    -- JSON kept as the exact text written: byte-identical round trips (jsonb would reorder
    -- keys and reject "\u0000") and no server-side conversion when read.
    payload        text        NOT NULL,
    -- NULL for empty metadata.
    metadata       text,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE INDEX events_log ON events (tx, sequence);

-- One row per stream, locked by each append to it: the expected-version check and the write
-- happen in one transaction with no read-then-write race.
CREATE TABLE streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL
);

CREATE TABLE snapshots (
    stream_id      text        PRIMARY KEY,
    stream_version bigint      NOT NULL,
    schema_version integer     NOT NULL,
    payload        text        NOT NULL,
    taken_at       timestamptz NOT NULL
);

-- Stored events never change.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stored events are immutable (% on events refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();
