-- The authorization checks the first request passed, as JSON, so that a
-- replay is decided again as that request would be now (rows written
-- before this column replay after authentication alone, as they did).
ALTER TABLE idempotency_keys ADD COLUMN checks TEXT NOT NULL DEFAULT '';
