-- reelay's PostgreSQL schema: the same records as the SQLite one, in PostgreSQL's own types.
-- Times are timestamptz (microseconds, like SQLite's integers); money is bigint units of
-- 0.0001 credit; ids are uuid, but for webhook ids (`msg_…`) and worker token ids.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    balance     bigint NOT NULL CHECK (balance >= 0),
    created_at  timestamptz NOT NULL
);
CREATE INDEX accounts_by_name ON accounts (name, created_at);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id),
    name          text NOT NULL,
    shown_prefix  text NOT NULL,
    secret_hash   bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at);

CREATE TABLE generations (
    id               uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id),
    status           text NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    prompt           text NOT NULL,
    model            text NOT NULL,
    aspect_ratio     text NOT NULL,
    seed             bigint NOT NULL,
    watermark_text   text,
    callback_url     text,
    -- The callback's scheme, host and port, which its webhook event is delivered by.
    destination      text,
    price            bigint NOT NULL,
    inputs           text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    deadline_at      timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    progress_pct     smallint NOT NULL DEFAULT 0,
    claims           integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_until      timestamptz,
    ended_lease      text,
    failure_code     text,
    failure_reason   text,
    video_file       text,
    video_url        text,
    media_pruned_at  timestamptz,
    CHECK ((status = 'failed') = (failure_code IS NOT NULL)),
    CHECK ((status = 'completed') = (video_file IS NOT NULL)),
    CHECK ((status IN ('completed', 'failed')) = (completed_at IS NOT NULL))
);
CREATE INDEX generations_by_account ON generations (account_id, created_at DESC, id DESC);
CREATE INDEX generations_pending ON generations (created_at) WHERE status = 'pending';
CREATE INDEX generations_running ON generations (deadline_at) WHERE status IN ('pending', 'processing');
CREATE INDEX generations_leases ON generations (lease_until) WHERE status = 'processing';
CREATE INDEX generations_pending_by_model ON generations (model, created_at) WHERE status = 'pending';
CREATE INDEX generations_leases_by_model ON generations (model, lease_until) WHERE status = 'processing';
CREATE INDEX generations_media_to_prune ON generations (completed_at)
    WHERE completed_at IS NOT NULL AND media_pruned_at IS NULL;
CREATE INDEX generations_records_to_prune ON generations (completed_at)
    WHERE media_pruned_at IS NOT NULL;

-- Every movement of credits. A generation is charged once and refunded at most once: the
-- unique index makes the database enforce it. The ledger outlives the generations it names
-- (retention never prunes it), so it has no foreign key to them.
CREATE TABLE ledger (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     uuid NOT NULL REFERENCES accounts (id),
    generation_id  uuid,
    kind           text NOT NULL CHECK (kind IN ('credit', 'charge', 'refund')),
    amount         bigint NOT NULL,
    created_at     timestamptz NOT NULL
);
CREATE UNIQUE INDEX ledger_once_per_generation ON ledger (generation_id, kind)
    WHERE generation_id IS NOT NULL;
CREATE INDEX ledger_by_account ON ledger (account_id);

CREATE TABLE idempotency_keys (
    account_id     uuid NOT NULL REFERENCES accounts (id),
    key            text NOT NULL,
    request_hash   bytea NOT NULL,
    generation_id  uuid NOT NULL REFERENCES generations (id),
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_by_generation ON idempotency_keys (generation_id);

-- The outbox: one event per terminal generation, written in the terminal transition's
-- transaction. The row carries the webhook's delivery state; while an attempt is in flight,
-- next_attempt_at is its lease's expiry, so a dead node's event becomes due again by itself.
CREATE TABLE events (
    id                text PRIMARY KEY,
    generation_id     uuid NOT NULL UNIQUE REFERENCES generations (id),
    account_id        uuid NOT NULL REFERENCES accounts (id),
    callback_url      text,
    destination       text COLLATE "C",  -- byte order, as the dispatcher walks it
    payload           text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL,
    state             text NOT NULL CHECK (state IN ('none', 'pending', 'delivered', 'failed')),
    round_attempts    integer NOT NULL DEFAULT 0,
    total_attempts    integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,
    lease_owner       text,
    last_attempt_at   timestamptz,
    last_status_code  integer,
    failure_reason    text,
    delivered_at      timestamptz,
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((state = 'none') = (callback_url IS NULL))
);
CREATE INDEX events_due ON events (next_attempt_at) WHERE state = 'pending';
CREATE INDEX events_due_by_destination ON events (destination, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX events_failed ON events (account_id, created_at) WHERE state = 'failed';
-- The attempts in flight to each destination, counted across nodes before every lease so
-- that a destination's limit holds for the whole cluster.
CREATE INDEX events_in_flight ON events (destination) WHERE state = 'pending' AND lease_owner IS NOT NULL;

CREATE TABLE delivery_attempts (
    event_id       text NOT NULL REFERENCES events (id),
    number         integer NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_ms    bigint NOT NULL,
    outcome        text NOT NULL,
    status_code    integer,
    response_body  text,
    error          text,
    PRIMARY KEY (event_id, number)
);

-- Webhook signing secrets, sealed by the server's master key. The current one has no
-- retired_at; a rotated-out one keeps signing until retired_at.
CREATE TABLE signing_secrets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    retired_at  timestamptz
);
CREATE UNIQUE INDEX signing_secrets_current ON signing_secrets (account_id) WHERE retired_at IS NULL;
CREATE INDEX signing_secrets_by_account ON signing_secrets (account_id, id);

-- External workers' tokens, apart from API keys: each is looked up only in its own table.
CREATE TABLE worker_tokens (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    models        text NOT NULL DEFAULT '',
    shown_prefix  text NOT NULL,
    secret_hash   bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
