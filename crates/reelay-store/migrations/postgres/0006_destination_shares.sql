-- Each node's share of a destination's limit of attempts in flight. A node with a share that
-- covers what it asks for leases without the destination's advisory lock, counting only its
-- own open requests against its share; the lock is taken to size a share (about once a
-- second while the node sends, or when it needs more), and then every other owner counts as
-- the greater of its live leases and its fresh share, so the shares and the leases together
-- never take the destination past its limit. `wants` (the node's open requests and asked-for
-- deliveries when its share was sized) lets a node that needs less than an even split leave
-- the rest to the others. A share stops counting `renewed_at` plus a few seconds after it was
-- sized: a node that stopped sending, or died, frees it by itself.
CREATE TABLE destination_shares (
    destination text NOT NULL,
    owner       text NOT NULL,
    share       integer NOT NULL CHECK (share >= 0),
    wants       integer NOT NULL CHECK (wants >= 0),
    renewed_at  timestamptz NOT NULL,
    PRIMARY KEY (destination, owner)
);
-- For dropping the shares of an owner that has lapsed or stopped.
CREATE INDEX destination_shares_by_owner ON destination_shares (owner);
