-- The additional checksum of each multipart part ("ALGO:base64"), from
-- which Complete derives the object's checksum.
ALTER TABLE multipart_parts ADD COLUMN checksum TEXT;

-- Bucket settings S3 clients manage (tags sealed under the platform key,
-- CORS rules, public read): one JSON document, written whole.
ALTER TABLE buckets ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';

-- Garbage collection looks up uploads by the version they reserve.
CREATE INDEX multipart_uploads_by_version ON multipart_uploads (version_id);
