//! Organizations: the tenants.

use nuage_core::model::{Org, Principal, RoleBinding};
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::principals::insert_principal;
use crate::role_bindings::insert_binding;
use crate::tokens::{insert_token, NewToken};
use crate::{db_err, from_json_text, insert_err, json_text, Store};

const COLS: &str =
    "id, name, display_name, mfa_required_roles, max_projects, generation, created_at, updated_at";

fn row_to_org(r: &AnyRow) -> Result<Org, sqlx::Error> {
    Ok(Org {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        display_name: r.try_get("display_name")?,
        mfa_required_roles: from_json_text(&r.try_get::<String, _>("mfa_required_roles")?)?,
        max_projects: r.try_get("max_projects")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Creates an organization with its first owner (and, optionally, the
    /// owner's first API token) in one transaction.
    pub async fn org_create(
        &self,
        org: &Org,
        owner: &Principal,
        owner_password_hash: Option<&str>,
        binding: &RoleBinding,
        token: Option<&NewToken>,
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO orgs (id, name, display_name, mfa_required_roles, max_projects, \
             policy_generation, generation, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.display_name)
        .bind(json_text(&org.mfa_required_roles)?)
        .bind(org.max_projects)
        .bind(org.generation)
        .bind(org.created_at)
        .bind(org.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("organization", &org.name))?;
        insert_principal(&mut tx, owner, owner_password_hash).await?;
        insert_binding(&mut tx, binding).await?;
        if let Some(t) = token {
            insert_token(&mut tx, t).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Looks an organization up by name or id.
    pub async fn org_get(&self, name_or_id: &str) -> ApiResult<Option<Org>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM orgs WHERE name = $1 OR id = $1"
        ))
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_org(&r)).transpose().map_err(db_err)
    }

    pub async fn org_list(&self, page: &PageRequest) -> ApiResult<Page<Org>> {
        let after = page.after.clone().unwrap_or_default();
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM orgs WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_org)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |o| o.name.clone()))
    }

    /// Read-modify-write with optimistic concurrency: `expected` is the
    /// generation the client saw (from `If-Match`), if any.
    pub async fn org_update(
        &self,
        id: &str,
        expected: Option<i64>,
        apply: impl FnOnce(&mut Org) -> ApiResult<()>,
    ) -> ApiResult<Org> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!("SELECT {COLS} FROM orgs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("organization", id))?;
        let mut org = row_to_org(&row).map_err(db_err)?;
        check_generation(expected, org.generation)?;
        let seen = org.generation;
        apply(&mut org)?;
        org.generation = seen + 1;
        org.updated_at = nuage_core::time::now_ms();
        let done = sqlx::query(
            "UPDATE orgs SET display_name = $1, mfa_required_roles = $2, max_projects = $3, \
             generation = $4, updated_at = $5 WHERE id = $6 AND generation = $7",
        )
        .bind(&org.display_name)
        .bind(json_text(&org.mfa_required_roles)?)
        .bind(org.max_projects)
        .bind(org.generation)
        .bind(org.updated_at)
        .bind(&org.id)
        .bind(seen)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::precondition_failed(
                "the organization changed concurrently; read it again",
            ));
        }
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(org)
    }

    /// Deletes an empty organization with its identities and bindings.
    pub async fn org_delete(&self, id: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let projects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE org_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if projects > 0 {
            return Err(ApiError::conflict(
                "not_empty",
                format!("the organization still holds {projects} project(s); delete them first"),
            ));
        }
        for sql in [
            "DELETE FROM group_members WHERE group_id IN (SELECT id FROM principal_groups WHERE org_id = $1)",
            "DELETE FROM principal_groups WHERE org_id = $1",
            "DELETE FROM role_bindings WHERE org_id = $1",
            "DELETE FROM tokens WHERE org_id = $1",
            "DELETE FROM principals WHERE org_id = $1",
            "DELETE FROM policies WHERE org_id = $1",
            "DELETE FROM oidc_providers WHERE org_id = $1",
            "DELETE FROM kms_managers WHERE org_id = $1",
            "DELETE FROM project_storage_quotas WHERE org_id = $1",
            "DELETE FROM orgs WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    pub async fn org_policy_generation(&self, id: &str) -> ApiResult<i64> {
        sqlx::query_scalar("SELECT policy_generation FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("organization", id))
    }
}

/// `If-Match` check shared by every update.
pub(crate) fn check_generation(expected: Option<i64>, actual: i64) -> ApiResult<()> {
    match expected {
        Some(e) if e != actual => Err(ApiError::precondition_failed(format!(
            "If-Match does not match: the resource is at generation {actual}"
        ))),
        _ => Ok(()),
    }
}
