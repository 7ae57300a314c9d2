-- Streams and the global log. Applied migrations are never edited: change the schema with a
-- new numbered file.

-- One row per stream: its name and current version. Events refer to the small integer key,
-- which keeps the events table and its (stream, version) index compact.
CREATE TABLE streams (
    stream_key INTEGER PRIMARY KEY,
    stream_id  TEXT    NOT NULL UNIQUE,
    version    INTEGER NOT NULL CHECK (version >= 0)
);

-- The global log. `seq` is the log position: the store assigns max + 1 inside a write
-- transaction, and SQLite runs one write transaction at a time, so positions become visible
-- in order and without gaps. AUTOINCREMENT keeps a position from ever being handed out twice.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_key     INTEGER NOT NULL REFERENCES streams (stream_key),
    stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
    event_id       BLOB    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    -- Unix time in nanoseconds, set once per append transaction.
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_key, stream_version)
);
