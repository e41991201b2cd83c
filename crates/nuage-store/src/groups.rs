//! Groups of principals, the usual target of role bindings (and of OIDC
//! claim mappings).

use nuage_core::model::{Group, PrincipalRef};
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::orgs::check_generation;
use crate::{db_err, insert_err, is_unique_violation, Store};

const COLS: &str = "id, org_id, name, description, generation, created_at, updated_at";

fn row_to_group(r: &AnyRow) -> Result<Group, sqlx::Error> {
    Ok(Group {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    pub async fn group_create(&self, g: &Group) -> ApiResult<()> {
        sqlx::query(&format!(
            "INSERT INTO principal_groups ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&g.id)
        .bind(&g.org_id)
        .bind(&g.name)
        .bind(&g.description)
        .bind(g.generation)
        .bind(g.created_at)
        .bind(g.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("group", &g.name))?;
        Ok(())
    }

    pub async fn group_get(&self, org_id: &str, name_or_id: &str) -> ApiResult<Option<Group>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM principal_groups WHERE org_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(org_id)
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_group(&r)).transpose().map_err(db_err)
    }

    pub async fn group_list(&self, org_id: &str, page: &PageRequest) -> ApiResult<Page<Group>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM principal_groups WHERE org_id = $1 AND name > $2 ORDER BY name LIMIT $3"
        ))
        .bind(org_id)
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_group)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |g| g.name.clone()))
    }

    pub async fn group_update(
        &self,
        id: &str,
        expected: Option<i64>,
        description: Option<String>,
    ) -> ApiResult<Group> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM principal_groups WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("group", id))?;
        let mut g = row_to_group(&row).map_err(db_err)?;
        check_generation(expected, g.generation)?;
        let seen = g.generation;
        if let Some(d) = description {
            g.description = d;
        }
        g.generation += 1;
        g.updated_at = nuage_core::time::now_ms();
        let done = sqlx::query(
            "UPDATE principal_groups SET description = $1, generation = $2, updated_at = $3 \
             WHERE id = $4 AND generation = $5",
        )
        .bind(&g.description)
        .bind(g.generation)
        .bind(g.updated_at)
        .bind(&g.id)
        .bind(seen)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::precondition_failed(
                "the group changed concurrently",
            ));
        }
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(g)
    }

    pub async fn group_delete(&self, id: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        for sql in [
            "DELETE FROM group_members WHERE group_id = $1",
            "DELETE FROM role_bindings WHERE subject_id = $1",
            "DELETE FROM principal_groups WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    pub async fn group_member_add(
        &self,
        group_id: &str,
        principal_id: &str,
        name: &str,
    ) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO group_members (group_id, principal_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(group_id)
        .bind(principal_id)
        .bind(nuage_core::time::now_ms())
        .execute(&self.write)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ApiError::conflict("already_member", format!("{name:?} is already a member"))
            } else {
                db_err(e)
            }
        })?;
        self.bump_epoch();
        Ok(())
    }

    pub async fn group_member_remove(&self, group_id: &str, principal_id: &str) -> ApiResult<bool> {
        let done =
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND principal_id = $2")
                .bind(group_id)
                .bind(principal_id)
                .execute(&self.write)
                .await
                .map_err(db_err)?;
        self.bump_epoch();
        Ok(done.rows_affected() > 0)
    }

    pub async fn group_member_list(&self, group_id: &str) -> ApiResult<Vec<PrincipalRef>> {
        let rows = sqlx::query(
            "SELECT p.id, p.kind, p.name FROM group_members m JOIN principals p ON p.id = m.principal_id \
             WHERE m.group_id = $1 ORDER BY p.name",
        )
        .bind(group_id)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(PrincipalRef {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    name: r.try_get("name")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)
    }
}

impl Store {
    /// Ids of the groups `principal_id` belongs to.
    pub async fn principal_group_ids(&self, principal_id: &str) -> ApiResult<Vec<String>> {
        sqlx::query_scalar("SELECT group_id FROM group_members WHERE principal_id = $1")
            .bind(principal_id)
            .fetch_all(&self.read)
            .await
            .map_err(db_err)
    }
}
