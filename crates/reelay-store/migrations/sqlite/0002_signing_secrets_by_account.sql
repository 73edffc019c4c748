-- An account's signing secrets, newest first: read on every delivery (at most two rows) and
-- at every rotation, without scanning every account's secrets.
CREATE INDEX signing_secrets_by_account ON signing_secrets (account_id, id);
