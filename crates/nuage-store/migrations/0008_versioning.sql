-- Bucket versioning and lifecycle rules.
--
-- `buckets.versioning`: '' (never enabled: one version per key, as before),
-- 'Enabled' or 'Suspended' (S3 never returns a bucket to '').
-- `buckets.lifecycle`: the bucket's lifecycle rules as JSON ('' for none).
ALTER TABLE buckets ADD COLUMN versioning TEXT NOT NULL DEFAULT '';
ALTER TABLE buckets ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '';

-- `objects.is_current` now has three values: 1 the version a plain GET
-- reads, 2 a delete marker that is the latest version of its key (a plain
-- GET answers NoSuchKey), 0 a noncurrent version or marker. Queries that
-- read or list current objects (`is_current = 1`) need no change.
-- `is_marker`: the row is a delete marker (no body, no data key).
-- `null_version`: the version's id is "null" to clients (written while the
-- bucket was never versioned, or suspended); at most one per key.
-- `seq`: the version's rank within its key (newest highest), since two
-- versions may share a millisecond.
ALTER TABLE objects ADD COLUMN is_marker BIGINT NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN null_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE objects ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
-- One latest version (object or marker) per key: concurrent writers of a
-- key conflict here and retry.
CREATE UNIQUE INDEX objects_latest ON objects (bucket_id, key_hex) WHERE is_current <> 0;
CREATE INDEX objects_by_seq ON objects (bucket_id, key_hex, seq);
