-- reelay's SQLite schema. Times are microseconds since the Unix epoch (UTC); money is integer
-- units of 0.0001 credit; ids are hyphenated UUID text.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    balance     INTEGER NOT NULL CHECK (balance >= 0),
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    name          TEXT NOT NULL,
    shown_prefix  TEXT NOT NULL,
    secret_hash   BLOB NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

CREATE TABLE generations (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    prompt          TEXT NOT NULL,
    model           TEXT NOT NULL,
    aspect_ratio    TEXT NOT NULL,
    seed            INTEGER NOT NULL,
    watermark_text  TEXT,
    callback_url    TEXT,
    price           INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    deadline_at     INTEGER NOT NULL,
    started_at      INTEGER,
    completed_at    INTEGER,
    progress_pct    INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     INTEGER,
    failure_code    TEXT,
    video_file      TEXT,
    video_url       TEXT,
    CHECK ((status = 'failed') = (failure_code IS NOT NULL)),
    CHECK ((status = 'completed') = (video_file IS NOT NULL)),
    CHECK ((status IN ('completed', 'failed')) = (completed_at IS NOT NULL))
);
CREATE INDEX generations_by_account ON generations (account_id, created_at DESC);
CREATE INDEX generations_pending ON generations (created_at) WHERE status = 'pending';
CREATE INDEX generations_running ON generations (deadline_at) WHERE status IN ('pending', 'processing');
CREATE INDEX generations_leases ON generations (lease_until) WHERE status = 'processing';

-- Every movement of credits. A generation is charged once and refunded at most once: the
-- unique index makes the database, not only the code, enforce it.
CREATE TABLE ledger (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    generation_id  TEXT REFERENCES generations(id),
    kind           TEXT NOT NULL CHECK (kind IN ('credit', 'charge', 'refund')),
    amount         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX ledger_once_per_generation ON ledger (generation_id, kind)
    WHERE generation_id IS NOT NULL;

CREATE TABLE idempotency_keys (
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    key            TEXT NOT NULL,
    request_hash   BLOB NOT NULL,
    generation_id  TEXT NOT NULL REFERENCES generations(id),
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
);

-- The outbox: one event per terminal generation, written in the same transaction as the
-- terminal status, so no terminal state can exist without its event. The row also carries the
-- webhook's delivery state. While an attempt is in flight, next_attempt_at is its lease's
-- expiry: a crashed sender's event becomes due again by itself.
CREATE TABLE events (
    id                TEXT PRIMARY KEY,
    generation_id     TEXT NOT NULL UNIQUE REFERENCES generations(id),
    account_id        TEXT NOT NULL REFERENCES accounts(id),
    callback_url      TEXT,
    destination       TEXT,
    payload           TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('none', 'pending', 'delivered', 'failed')),
    round_attempts    INTEGER NOT NULL DEFAULT 0,
    total_attempts    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,
    lease_owner       TEXT,
    last_attempt_at   INTEGER,
    last_status_code  INTEGER,
    failure_reason    TEXT,
    delivered_at      INTEGER,
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((state = 'none') = (callback_url IS NULL))
);
CREATE INDEX events_due ON events (next_attempt_at) WHERE state = 'pending';
CREATE INDEX events_due_by_destination ON events (destination, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX events_failed ON events (account_id, created_at) WHERE state = 'failed';

-- Every webhook attempt, for the deliveries API.
CREATE TABLE delivery_attempts (
    event_id       TEXT NOT NULL REFERENCES events(id),
    number         INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    status_code    INTEGER,
    response_body  TEXT,
    error          TEXT,
    PRIMARY KEY (event_id, number)
) WITHOUT ROWID;

-- Webhook signing secrets, sealed (encrypted) by the server's master key. The current one has
-- no retired_at; a rotated-out one keeps signing until retired_at.
CREATE TABLE signing_secrets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);
CREATE UNIQUE INDEX signing_secrets_current ON signing_secrets (account_id) WHERE retired_at IS NULL;
