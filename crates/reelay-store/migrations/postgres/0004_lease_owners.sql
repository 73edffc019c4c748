-- The owners (nodes) that may hold live delivery leases, each listed until `live_until`, never
-- earlier than the expiry of any delivery lease it holds: a node lists itself in the
-- transaction of a lease that would outlast its entry, and removes itself when it stops
-- with nothing in flight. A lease counts the attempts other nodes have in flight by looking
-- up each listed owner's entries in `events_in_flight`. Counted as ranges of that index
-- instead, it read every entry a node that has since gone left behind (a restarted node
-- runs under a new name): until vacuum removes them, a million dead entries after a drain
-- of a million retries, about 4 ms a lease.
CREATE TABLE lease_owners (
    owner       text PRIMARY KEY,
    live_until  timestamptz NOT NULL
);
-- The nodes leasing while this migration runs (an upgrade with nodes still running).
INSERT INTO lease_owners (owner, live_until)
SELECT lease_owner, MAX(next_attempt_at) FROM events
WHERE state = 'pending' AND lease_owner IS NOT NULL
GROUP BY lease_owner;
