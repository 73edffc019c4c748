-- Retention (REELAY_RETENTION, REELAY_RECORDS_RETENTION).
--
-- A finished generation's media (its video and input images) are deleted first; the row
-- remembers when, so its video URL answers 410 GONE. Its row, event and attempt log go later.
ALTER TABLE generations ADD COLUMN media_pruned_at INTEGER;
-- The next media to prune, and the next records, each read in index order and bounded.
CREATE INDEX generations_media_to_prune ON generations (completed_at)
    WHERE completed_at IS NOT NULL AND media_pruned_at IS NULL;
CREATE INDEX generations_records_to_prune ON generations (completed_at)
    WHERE media_pruned_at IS NOT NULL;

-- The ledger outlives the generations it names (balances and the ledger are never pruned), so
-- it keeps their ids without a foreign key. Nothing references the ledger, so it is rebuilt.
CREATE TABLE ledger_kept (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    generation_id  TEXT,
    kind           TEXT NOT NULL CHECK (kind IN ('credit', 'charge', 'refund')),
    amount         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
INSERT INTO ledger_kept (id, account_id, generation_id, kind, amount, created_at)
    SELECT id, account_id, generation_id, kind, amount, created_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_kept RENAME TO ledger;
CREATE UNIQUE INDEX ledger_once_per_generation ON ledger (generation_id, kind)
    WHERE generation_id IS NOT NULL;
