-- Requests that need a node's agent to act on a running VM (reboot, a
-- live snapshot, a live resize) when the VM runs on a node of its own: the
-- API request writes the task and waits; the agent claims it (pending →
-- running), does it and records the outcome (done | failed); a task nobody
-- claimed in time is cancelled by its request, so it never runs late.
CREATE TABLE node_tasks (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    -- JSON of the task (its kind and arguments).
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX node_tasks_by_node ON node_tasks (node_id, state);
