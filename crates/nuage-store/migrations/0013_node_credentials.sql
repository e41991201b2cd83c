-- A node that runs `nuage agent` on a host of its own authenticates with
-- the credential an operator enrolled it with; only its SHA-256 is kept.
-- NULL: the node embedded in `nuage server`, which needs none.
ALTER TABLE compute_nodes ADD COLUMN token_hash TEXT;
CREATE UNIQUE INDEX compute_nodes_by_token ON compute_nodes (token_hash);
