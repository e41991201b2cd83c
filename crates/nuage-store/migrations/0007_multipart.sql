-- Multipart uploads. An upload reserves the version id of the object it
-- will become, with that version's data key and sealed metadata, so that
-- Complete only has to flip rows. Parts are encrypted files of their own
-- (one data key each); a part row outlives its upload when Complete makes
-- it a piece of an object version (`version_id` set, read in part order).
CREATE TABLE multipart_uploads (
    upload_id TEXT PRIMARY KEY,
    bucket_id TEXT NOT NULL REFERENCES buckets (id),
    object_key TEXT NOT NULL,
    key_hex TEXT NOT NULL,
    version_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    sealed_meta TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX multipart_uploads_by_key ON multipart_uploads (bucket_id, key_hex, upload_id);

CREATE TABLE multipart_parts (
    part_id TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL,
    part_number BIGINT NOT NULL,
    size BIGINT NOT NULL,
    etag TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    version_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX multipart_parts_by_upload ON multipart_parts (upload_id, part_number);
CREATE INDEX multipart_parts_by_version ON multipart_parts (version_id, part_number);

-- How many part files make up a version's body (0: one body file).
ALTER TABLE objects ADD COLUMN part_count BIGINT NOT NULL DEFAULT 0;
