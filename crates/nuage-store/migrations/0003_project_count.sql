-- Keep each organization's project count on its row, so the quota check is
-- one conditional UPDATE instead of a COUNT over all its projects.
ALTER TABLE orgs ADD COLUMN project_count BIGINT NOT NULL DEFAULT 0;
UPDATE orgs SET project_count = (SELECT COUNT(*) FROM projects WHERE projects.org_id = orgs.id);
