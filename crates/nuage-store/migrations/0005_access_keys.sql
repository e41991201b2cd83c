-- S3 access keys. The secret is needed to verify SigV4 signatures, so it is
-- kept sealed by the key service (never hashed-and-lost, never in clear).
CREATE TABLE access_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    description TEXT NOT NULL,
    sealed_secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX access_keys_by_principal ON access_keys (org_id, principal_id, id);
