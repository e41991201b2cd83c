-- Compute: nodes that run virtual machines, operator-defined instance
-- types, and the project resources images, volumes, snapshots and
-- instances. Each resource keeps what the tenant asked for (spec columns)
-- apart from what a reconciler observed (`state`, `status_message`).
-- Disk files are qcow2 with LUKS encryption under a data key of the
-- project key (`data_key_id`); `layers` is the JSON chain of files (top
-- first) with the data key of each, which is what QEMU must open.

CREATE TABLE compute_nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    accel TEXT NOT NULL,
    accel_reason TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_bytes BIGINT NOT NULL,
    cpu_overcommit DOUBLE PRECISION NOT NULL,
    memory_overcommit DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE instance_types (
    name TEXT PRIMARY KEY,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    visibility TEXT NOT NULL,
    source_format TEXT NOT NULL,
    virtual_size BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    state TEXT NOT NULL,
    status_message TEXT NOT NULL,
    created_by TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX images_by_name ON images (project_id, name);
CREATE INDEX images_by_org ON images (org_id, visibility);

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    source_image_id TEXT,
    source_snapshot_id TEXT,
    key_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    layers TEXT NOT NULL,
    instance_id TEXT,
    state TEXT NOT NULL,
    status_message TEXT NOT NULL,
    created_by TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX volumes_by_name ON volumes (project_id, name);
CREATE INDEX volumes_by_image ON volumes (source_image_id);

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    layers TEXT NOT NULL,
    state TEXT NOT NULL,
    status_message TEXT NOT NULL,
    created_by TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX snapshots_by_name ON snapshots (project_id, name);
CREATE INDEX snapshots_by_volume ON snapshots (volume_id);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    image_id TEXT NOT NULL,
    boot_volume_id TEXT NOT NULL,
    ssh_keys TEXT NOT NULL,
    key_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    sealed_user_data TEXT NOT NULL,
    desired TEXT NOT NULL,
    node_id TEXT,
    state TEXT NOT NULL,
    status_message TEXT NOT NULL,
    created_by TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX instances_by_name ON instances (project_id, name);
CREATE INDEX instances_by_node ON instances (node_id);
