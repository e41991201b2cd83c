//! Projects: every infrastructure resource lives in one.

use nuage_core::model::Project;
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::cache::{Epoch, TtlCache};
use crate::orgs::check_generation;
use crate::{db_err, from_json_text, insert_err, json_text, Store};

const COLS: &str = "id, org_id, name, description, labels, generation, created_at, updated_at";

/// Projects by `(org id, name or id)`; every project change through this
/// process bumps the epoch after its commit.
#[derive(Default)]
pub(crate) struct ProjectCache {
    epoch: Epoch,
    rows: TtlCache<(String, String), Project>,
}

fn row_to_project(r: &AnyRow) -> Result<Project, sqlx::Error> {
    Ok(Project {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        labels: from_json_text(&r.try_get::<String, _>("labels")?)?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Inserts a project unless the organization's quota is reached; the
    /// count and the insert share one transaction.
    pub async fn project_create(&self, p: &Project, max_projects: i64) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let counted = sqlx::query(
            "UPDATE orgs SET project_count = project_count + 1 WHERE id = $1 AND project_count < $2",
        )
        .bind(&p.org_id)
        .bind(max_projects)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if counted.rows_affected() != 1 {
            return Err(ApiError::conflict(
                "quota_exceeded",
                format!("the organization may hold at most {max_projects} projects"),
            ));
        }
        // With the operator's storage quota recorded for this name, if any.
        sqlx::query(&format!(
            "INSERT INTO projects ({COLS}, storage_quota_bytes, storage_quota_objects) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
               COALESCE((SELECT q.max_bytes FROM project_storage_quotas q \
                         WHERE q.org_id = $2 AND q.project_name = $3), 0), \
               COALESCE((SELECT q.max_objects FROM project_storage_quotas q \
                         WHERE q.org_id = $2 AND q.project_name = $3), 0))"
        ))
        .bind(&p.id)
        .bind(&p.org_id)
        .bind(&p.name)
        .bind(&p.description)
        .bind(json_text(&p.labels)?)
        .bind(p.generation)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("project", &p.name))?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// The project named or identified `name_or_id` in `org_id`, from the
    /// in-process cache when it holds a fresh copy.
    pub async fn project_get(&self, org_id: &str, name_or_id: &str) -> ApiResult<Option<Project>> {
        let key = (org_id.to_string(), name_or_id.to_string());
        let epoch = self.projects.epoch.get();
        if let Some(p) = self.projects.rows.get(&key, epoch) {
            return Ok(Some(p));
        }
        let found = self.project_read(org_id, name_or_id).await?;
        if let Some(p) = &found {
            self.projects.rows.put(key, epoch, p.clone());
        }
        Ok(found)
    }

    async fn project_read(&self, org_id: &str, name_or_id: &str) -> ApiResult<Option<Project>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM projects WHERE org_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(org_id)
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_project(&r)).transpose().map_err(db_err)
    }

    pub async fn project_list(&self, org_id: &str, page: &PageRequest) -> ApiResult<Page<Project>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM projects WHERE org_id = $1 AND name > $2 ORDER BY name LIMIT $3"
        ))
        .bind(org_id)
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_project)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |p| p.name.clone()))
    }

    pub async fn project_update(
        &self,
        org_id: &str,
        id: &str,
        expected: Option<i64>,
        apply: impl FnOnce(&mut Project) -> ApiResult<()>,
    ) -> ApiResult<Project> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM projects WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("project", id))?;
        let mut p = row_to_project(&row).map_err(db_err)?;
        check_generation(expected, p.generation)?;
        let seen = p.generation;
        apply(&mut p)?;
        p.generation = seen + 1;
        p.updated_at = nuage_core::time::now_ms();
        let done = sqlx::query(
            "UPDATE projects SET description = $1, labels = $2, generation = $3, updated_at = $4 \
             WHERE id = $5 AND generation = $6",
        )
        .bind(&p.description)
        .bind(json_text(&p.labels)?)
        .bind(p.generation)
        .bind(p.updated_at)
        .bind(&p.id)
        .bind(seen)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::precondition_failed(
                "the project changed concurrently; read it again",
            ));
        }
        tx.commit().await.map_err(db_err)?;
        self.projects.epoch.bump();
        Ok(p)
    }

    pub async fn project_delete(
        &self,
        org_id: &str,
        id: &str,
        expected: Option<i64>,
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM projects WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let generation = generation.ok_or_else(|| ApiError::not_found("project", id))?;
        check_generation(expected, generation)?;
        let buckets: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM buckets WHERE project_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if buckets > 0 {
            return Err(ApiError::conflict(
                "project_not_empty",
                format!("the project still holds {buckets} bucket(s); delete them first"),
            ));
        }
        let live_keys: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM kms_keys WHERE project_id = $1 AND state <> 'destroyed'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        if live_keys > 0 {
            return Err(ApiError::conflict(
                "project_not_empty",
                format!("the project still holds {live_keys} key(s) that are not destroyed"),
            ));
        }
        for q in [
            "DELETE FROM kms_data_keys WHERE key_id IN (SELECT id FROM kms_keys WHERE project_id = $1)",
            "DELETE FROM kms_key_versions WHERE key_id IN (SELECT id FROM kms_keys WHERE project_id = $1)",
            "DELETE FROM kms_keys WHERE project_id = $1",
        ] {
            sqlx::query(q)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query("DELETE FROM role_bindings WHERE org_id = $1 AND project_id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("UPDATE orgs SET project_count = project_count - 1 WHERE id = $1")
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        self.projects.epoch.bump();
        Ok(())
    }
}
