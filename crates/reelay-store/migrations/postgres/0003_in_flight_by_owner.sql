-- Every lease counts the attempts other nodes have in flight to its destinations. The entries
-- of attempts already recorded stay in this index, dead, until vacuum removes them: keyed by
-- destination alone, that count read every attempt made to the destination since the last
-- vacuum (a drain of a million retries to one destination spent 54 ms a lease on it). Keyed
-- by owner too, a lease reads only the other owners' entries, none at all on a single node.
DROP INDEX events_in_flight;
CREATE INDEX events_in_flight ON events (destination, lease_owner)
    WHERE state = 'pending' AND lease_owner IS NOT NULL;
