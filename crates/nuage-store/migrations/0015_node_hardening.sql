-- Nodes enrolled for `nuage agent` must earn their tenants' workloads.
--
-- `challenge_hash`: the SHA-256 of the nonce the control plane last wrote
-- in its compute directory for the node (`nodes/<id>/challenge`), issued at
-- `challenge_at`; the agent proves it mounts that directory by reading it
-- back. Until it does, the node stays `enrolled` and placement skips it.
--
-- `schedulable`: placement puts instances only on nodes an operator made
-- schedulable (`nuage admin node schedule`); an enrolled node starts
-- without. `schedule_requested_by`: under the two-person rule, the
-- operator who asked first; a different one confirms.
--
-- `max_vcpus`, `max_memory_mib`: what the operator approved when
-- scheduling (0: no bound); placement never trusts a node's own report
-- beyond them.
ALTER TABLE compute_nodes ADD COLUMN challenge_hash TEXT;
ALTER TABLE compute_nodes ADD COLUMN challenge_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE compute_nodes ADD COLUMN schedulable BIGINT NOT NULL DEFAULT 1;
ALTER TABLE compute_nodes ADD COLUMN schedule_requested_by TEXT NOT NULL DEFAULT '';
ALTER TABLE compute_nodes ADD COLUMN max_vcpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE compute_nodes ADD COLUMN max_memory_mib BIGINT NOT NULL DEFAULT 0;
-- Nodes enrolled before this change prove their mount again (their agent
-- does at its next start); an operator had already accepted them, so they
-- stay schedulable.
UPDATE compute_nodes SET state = 'enrolled' WHERE token_hash IS NOT NULL;

-- Labels an operator puts on a node (`nuage admin node label`, a JSON
-- array of strings), and the labels an organization accepts for the nodes
-- its workloads run on: an organization with a row here has its instances
-- placed only on nodes carrying one of them.
ALTER TABLE compute_nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
CREATE TABLE org_node_labels (
    org_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
