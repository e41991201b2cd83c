-- Small object bodies live in their version row. A 4 KiB object in a file
-- costs a file creation, two fsyncs and a rename before its row commits;
-- in the row it rides the group commit of the metadata (and its fsync),
-- which is what lets small PUTs be committed in groups at all. The body is
-- the same sealed stream (chunked AEAD under the version's data key) as in
-- a file, in base64 so that one column type fits SQLite and PostgreSQL.
-- NULL: the body is in a file (or in parts).
ALTER TABLE objects ADD COLUMN inline_body TEXT;
