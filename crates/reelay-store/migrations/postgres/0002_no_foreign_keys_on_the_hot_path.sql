-- Foreign keys on the rows every generation writes cost more than they protect. Each check
-- is a query and a row lock, logged to the WAL, on the referenced row: with the account's row
-- (the hottest row of all, its balance moved by every create) that lock meets the creates'
-- and becomes a multixact. Profiled at saturation, these checks were about an eighth of
-- PostgreSQL's CPU per webhook. What they guarded is held by the writes themselves: a
-- generation, its charge and its event are written by statements that read the row they
-- name (the account locked by the create, the generation updated by the finish, the event
-- locked by the attempt), accounts are never deleted, and retention deletes attempts, events
-- and generations together, children first. The foreign keys off the hot path stay.
ALTER TABLE generations DROP CONSTRAINT generations_account_id_fkey;
ALTER TABLE ledger DROP CONSTRAINT ledger_account_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_account_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_generation_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_event_id_fkey;
