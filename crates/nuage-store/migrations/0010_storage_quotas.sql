-- Storage quotas. Each bucket counts what it holds — every version and
-- delete marker, with its bytes — in the same transaction that adds or
-- removes it; a project's usage is the sum over its buckets. A quota of 0
-- means none. Uploads in progress are not counted until completed.
ALTER TABLE buckets ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE buckets ADD COLUMN used_objects BIGINT NOT NULL DEFAULT 0;
ALTER TABLE buckets ADD COLUMN quota_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE buckets ADD COLUMN quota_objects BIGINT NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN storage_quota_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN storage_quota_objects BIGINT NOT NULL DEFAULT 0;
UPDATE buckets SET
    used_bytes = (SELECT COALESCE(SUM(o.size), 0) FROM objects o WHERE o.bucket_id = buckets.id),
    used_objects = (SELECT COUNT(*) FROM objects o WHERE o.bucket_id = buckets.id);
CREATE INDEX buckets_by_project_id ON buckets (project_id);
