-- Object storage. Buckets belong to a project and are encrypted under one
-- of its keys; names are unique per installation (S3 DNS rules).
CREATE TABLE buckets (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX buckets_by_project ON buckets (org_id, project_id, name);

-- One row per object version; `is_current` marks the version a plain GET
-- reads, so versioning can keep older rows later without a schema break.
-- `key_hex` (the key's UTF-8 bytes in hex) orders listings by bytes as S3
-- does, whatever the database collation. Metadata (user metadata and the
-- content headers) is sealed under the object's data key.
CREATE TABLE objects (
    version_id TEXT PRIMARY KEY,
    bucket_id TEXT NOT NULL REFERENCES buckets (id),
    object_key TEXT NOT NULL,
    key_hex TEXT NOT NULL,
    is_current BIGINT NOT NULL,
    size BIGINT NOT NULL,
    etag TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    sealed_meta TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX objects_current ON objects (bucket_id, key_hex) WHERE is_current = 1;
CREATE INDEX objects_by_key ON objects (bucket_id, key_hex, created_at);
