-- External workers (REELAY_GENERATOR=external).
-- Worker tokens live apart from API keys: a worker token is never an API key and the reverse,
-- because each is looked up only in its own table. Only the SHA-256 of a token is kept.
CREATE TABLE worker_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    models        TEXT NOT NULL DEFAULT '',  -- comma-separated model names; '' = every model
    shown_prefix  TEXT NOT NULL,
    secret_hash   BLOB NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

-- The lease that held a generation when it ended (a worker's complete or fail, or a cancel or
-- timeout during its lease): lets a repeated complete succeed again, and a worker whose job was
-- cancelled learn so, while any other lease is told it lost.
ALTER TABLE generations ADD COLUMN ended_lease TEXT;

-- A claim filtered by model walks these per model, in order, and stops at its limit.
CREATE INDEX generations_pending_by_model ON generations (model, created_at) WHERE status = 'pending';
CREATE INDEX generations_leases_by_model ON generations (model, lease_until) WHERE status = 'processing';
