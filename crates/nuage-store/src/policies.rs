//! Custom Cedar policies of an organization. Every change bumps the
//! organization's `policy_generation`, so each server can cache the parsed
//! policy set and notice a change made through another server.

use nuage_core::model::Policy;
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::orgs::check_generation;
use crate::{db_err, insert_err, Store};

const COLS: &str = "id, org_id, name, description, body, generation, created_at, updated_at";

fn row_to_policy(r: &AnyRow) -> Result<Policy, sqlx::Error> {
    Ok(Policy {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        body: r.try_get("body")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn bump(tx: &mut Transaction<'_, Any>, org_id: &str) -> ApiResult<()> {
    sqlx::query("UPDATE orgs SET policy_generation = policy_generation + 1 WHERE id = $1")
        .bind(org_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

impl Store {
    pub async fn policy_create(&self, p: &Policy) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query(&format!(
            "INSERT INTO policies ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&p.id)
        .bind(&p.org_id)
        .bind(&p.name)
        .bind(&p.description)
        .bind(&p.body)
        .bind(p.generation)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("policy", &p.name))?;
        bump(&mut tx, &p.org_id).await?;
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    pub async fn policy_get(&self, org_id: &str, name_or_id: &str) -> ApiResult<Option<Policy>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM policies WHERE org_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(org_id)
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_policy(&r)).transpose().map_err(db_err)
    }

    pub async fn policy_list(&self, org_id: &str, page: &PageRequest) -> ApiResult<Page<Policy>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM policies WHERE org_id = $1 AND name > $2 ORDER BY name LIMIT $3"
        ))
        .bind(org_id)
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_policy)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |p| p.name.clone()))
    }

    /// Every policy of an organization with the generation they belong to.
    pub async fn policy_all(&self, org_id: &str) -> ApiResult<(i64, Vec<Policy>)> {
        let mut tx = self.read.begin().await.map_err(db_err)?;
        let generation: i64 =
            sqlx::query_scalar("SELECT policy_generation FROM orgs WHERE id = $1")
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .ok_or_else(|| ApiError::not_found("organization", org_id))?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM policies WHERE org_id = $1 ORDER BY name"
        ))
        .bind(org_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_policy)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok((generation, items))
    }

    pub async fn policy_update(
        &self,
        org_id: &str,
        id: &str,
        expected: Option<i64>,
        apply: impl FnOnce(&mut Policy) -> ApiResult<()>,
    ) -> ApiResult<Policy> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM policies WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("policy", id))?;
        let mut p = row_to_policy(&row).map_err(db_err)?;
        check_generation(expected, p.generation)?;
        let seen = p.generation;
        apply(&mut p)?;
        p.generation = seen + 1;
        p.updated_at = nuage_core::time::now_ms();
        let done = sqlx::query(
            "UPDATE policies SET description = $1, body = $2, generation = $3, updated_at = $4 \
             WHERE id = $5 AND generation = $6",
        )
        .bind(&p.description)
        .bind(&p.body)
        .bind(p.generation)
        .bind(p.updated_at)
        .bind(&p.id)
        .bind(seen)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::precondition_failed(
                "the policy changed concurrently",
            ));
        }
        bump(&mut tx, org_id).await?;
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(p)
    }

    pub async fn policy_delete(&self, org_id: &str, id: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let done = sqlx::query("DELETE FROM policies WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("policy", id));
        }
        bump(&mut tx, org_id).await?;
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }
}
