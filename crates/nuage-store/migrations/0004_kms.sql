-- The key service. Key material is never stored in clear: the root key is
-- sealed (key file, passphrase or external KMIP), KEK versions are wrapped by
-- the root key, data keys by a KEK version (or by an external key manager).
-- Binary values are base64 text so one schema serves both engines.

CREATE TABLE kms_root (
    id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    sealed_root TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE kms_managers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    sealed_secret TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE kms_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    manager_id TEXT REFERENCES kms_managers (id),
    state TEXT NOT NULL,
    primary_version BIGINT NOT NULL,
    justifications TEXT,
    destroy_at BIGINT,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE kms_key_versions (
    key_id TEXT NOT NULL REFERENCES kms_keys (id),
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    material TEXT,
    external_ref TEXT,
    created_at BIGINT NOT NULL,
    destroyed_at BIGINT,
    PRIMARY KEY (key_id, version)
);

CREATE TABLE kms_data_keys (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES kms_keys (id),
    key_version BIGINT NOT NULL,
    owner TEXT NOT NULL,
    wrapped TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX kms_data_keys_by_key ON kms_data_keys (key_id, key_version, id);

CREATE INDEX kms_keys_due ON kms_keys (state, destroy_at);
