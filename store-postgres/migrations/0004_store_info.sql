-- The store's identity: one row holding a random id made when the store (this schema) was
-- created, the same for every handle ever after, so a read model can tell when the store under
-- it was replaced (a dropped and recreated schema gets a new id).
--
-- The migrator holds its advisory lock while it runs, and the insert is a no-op when the row
-- exists, so processes migrating at once still make exactly one id.
CREATE TABLE store_info (
    -- Always true: the table holds one row.
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    store_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO store_info DEFAULT VALUES ON CONFLICT (singleton) DO NOTHING;
