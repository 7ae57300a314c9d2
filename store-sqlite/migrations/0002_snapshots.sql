-- Snapshots: the latest saved state per stream (the one with the highest stream version).
CREATE TABLE snapshots (
    stream_id      TEXT    PRIMARY KEY,
    stream_version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    -- Unix time in nanoseconds.
    taken_at       INTEGER NOT NULL
) WITHOUT ROWID;
