//! Role bindings: principal or group → role, at organization or project
//! scope. Which actions a role allows is the IAM crate's business.

use nuage_core::model::{PrincipalRef, RoleBinding};
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{db_err, is_unique_violation, Store};

const SELECT: &str =
    "SELECT rb.id, rb.org_id, rb.project_id, rb.subject_id, rb.subject_kind, rb.role, \
    rb.created_at, COALESCE(p.name, g.name, '') AS subject_name FROM role_bindings rb \
    LEFT JOIN principals p ON p.id = rb.subject_id \
    LEFT JOIN principal_groups g ON g.id = rb.subject_id";

/// A role a principal holds, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveBinding {
    pub role: String,
    /// `None` for organization-wide.
    pub project_id: Option<String>,
}

fn row_to_binding(r: &AnyRow) -> Result<RoleBinding, sqlx::Error> {
    let project_id: String = r.try_get("project_id")?;
    Ok(RoleBinding {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: (!project_id.is_empty()).then_some(project_id),
        subject: PrincipalRef {
            id: r.try_get("subject_id")?,
            kind: r.try_get("subject_kind")?,
            name: r.try_get("subject_name")?,
        },
        role: r.try_get("role")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(crate) async fn insert_binding(
    tx: &mut Transaction<'_, Any>,
    b: &RoleBinding,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO role_bindings (id, org_id, project_id, subject_id, subject_kind, role, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&b.id)
    .bind(&b.org_id)
    .bind(b.project_id.clone().unwrap_or_default())
    .bind(&b.subject.id)
    .bind(&b.subject.kind)
    .bind(&b.role)
    .bind(b.created_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::already_exists("role binding", &format!("{} → {}", b.subject.name, b.role))
        } else {
            db_err(e)
        }
    })?;
    Ok(())
}

impl Store {
    pub async fn role_binding_create(&self, b: &RoleBinding) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        insert_binding(&mut tx, b).await?;
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    /// Bindings of one scope: the organization (`project_id = None`) or
    /// one project.
    pub async fn role_binding_list(
        &self,
        org_id: &str,
        project_id: Option<&str>,
        page: &PageRequest,
    ) -> ApiResult<Page<RoleBinding>> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE rb.org_id = $1 AND rb.project_id = $2 AND rb.id > $3 ORDER BY rb.id LIMIT $4"
        ))
        .bind(org_id)
        .bind(project_id.unwrap_or_default())
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_binding)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |b| b.id.clone()))
    }

    pub async fn role_binding_get(&self, org_id: &str, id: &str) -> ApiResult<Option<RoleBinding>> {
        let row = sqlx::query(&format!("{SELECT} WHERE rb.org_id = $1 AND rb.id = $2"))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        row.map(|r| row_to_binding(&r)).transpose().map_err(db_err)
    }

    /// Deletes a binding, refusing to remove the last organization owner
    /// (an organization nobody can administer is lost to its tenant).
    pub async fn role_binding_delete(&self, org_id: &str, id: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row =
            sqlx::query("SELECT role, project_id FROM role_bindings WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .ok_or_else(|| ApiError::not_found("role binding", id))?;
        let role: String = row.try_get("role").map_err(db_err)?;
        let project: String = row.try_get("project_id").map_err(db_err)?;
        if role == "owner" && project.is_empty() {
            let owners: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM role_bindings WHERE org_id = $1 AND project_id = '' AND role = 'owner'",
            )
            .bind(org_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if owners <= 1 {
                return Err(ApiError::conflict(
                    "last_owner",
                    "this is the organization's last owner binding; grant another owner first",
                ));
            }
        }
        sqlx::query("DELETE FROM role_bindings WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    /// Roles held by any of `subject_ids` (a principal and its groups) on the
    /// organization, and on `project_id` when given.
    pub async fn role_binding_effective(
        &self,
        org_id: &str,
        project_id: Option<&str>,
        subject_ids: &[String],
    ) -> ApiResult<Vec<EffectiveBinding>> {
        if subject_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (0..subject_ids.len())
            .map(|i| format!("${}", i + 3))
            .collect();
        let sql = format!(
            "SELECT role, project_id FROM role_bindings WHERE org_id = $1 \
             AND (project_id = '' OR project_id = $2) AND subject_id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(org_id)
            .bind(project_id.unwrap_or_default());
        for s in subject_ids {
            q = q.bind(s);
        }
        let rows = q.fetch_all(&self.read).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let p: String = r.try_get("project_id")?;
                Ok(EffectiveBinding {
                    role: r.try_get("role")?,
                    project_id: (!p.is_empty()).then_some(p),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)
    }
}
