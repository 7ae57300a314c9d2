-- The store's identity: one row holding a random id, made once when the file is created (or,
-- for a file from before this migration, when it is first opened by this version), the same
-- for every handle ever after. The id itself is inserted by the store in the transaction that
-- runs the migrations (`INSERT OR IGNORE`), so it is a proper random UUID.
CREATE TABLE store_info (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    store_id  BLOB    NOT NULL CHECK (length(store_id) = 16)
);
