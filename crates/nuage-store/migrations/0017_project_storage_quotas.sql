-- The operator's object-storage quotas, by organization and project name.
-- The operator names a tenant's project but must not learn whether it
-- exists: the quota is recorded here whether or not it does, set on the row
-- of the project holding that name now (in the same transaction), and
-- copied onto the row of a project created later under that name. The
-- projects' own columns stay what writes check. Project names never change.
CREATE TABLE project_storage_quotas (
    org_id TEXT NOT NULL REFERENCES orgs (id),
    project_name TEXT NOT NULL,
    max_bytes BIGINT NOT NULL,
    max_objects BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, project_name)
);
INSERT INTO project_storage_quotas (org_id, project_name, max_bytes, max_objects, updated_at)
    SELECT org_id, name, storage_quota_bytes, storage_quota_objects, updated_at FROM projects
    WHERE storage_quota_bytes > 0 OR storage_quota_objects > 0;
