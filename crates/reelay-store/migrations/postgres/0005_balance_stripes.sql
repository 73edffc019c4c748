-- An account's balance, kept in eight stripes whose sum it is. Every create writes its
-- account's balance, and a row can take one writer at a time: with the balance on the
-- account's row, the create batches of two nodes for one busy account waited for each other
-- (each holds the row until its commit is flushed), so two nodes created no faster than one.
-- A batch charges one stripe picked at random, so the batches of different nodes rarely meet.
-- A charge its stripe cannot cover, a credit and a refund across stripes lock all of the
-- account's stripes in order and leave the total spread evenly again
-- (`reelay_stripe_share`), so a balance is never overdrawn, however it is spread.
CREATE TABLE balance_stripes (
    account_id  uuid NOT NULL REFERENCES accounts (id),
    stripe      smallint NOT NULL CHECK (stripe >= 0 AND stripe < 8),
    balance     bigint NOT NULL CHECK (balance >= 0),
    PRIMARY KEY (account_id, stripe)
);

-- Stripe `stripe`'s share of `total` spread evenly over the eight: the remainder's units go
-- to the first stripes.
CREATE FUNCTION reelay_stripe_share(total bigint, stripe integer) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN total / 8 + CASE WHEN stripe < total % 8 THEN 1 ELSE 0 END;

INSERT INTO balance_stripes (account_id, stripe, balance)
SELECT a.id, s.stripe, reelay_stripe_share(a.balance, s.stripe)
FROM accounts a CROSS JOIN generate_series(0, 7) AS s (stripe);

ALTER TABLE accounts DROP COLUMN balance;
