//! S3 access keys: an id S3 clients send in clear and a secret kept sealed
//! (it must be read back to check signatures).

use nuage_core::model::{AccessKey, Org, Principal};
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, insert_err, Store};

const COLS: &str =
    "id, org_id, principal_id, description, sealed_secret, created_at, last_used_at, revoked_at";

fn row_to_key(r: &AnyRow) -> Result<AccessKey, sqlx::Error> {
    Ok(AccessKey {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        principal_id: r.try_get("principal_id")?,
        description: r.try_get("description")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

/// What a signature check needs: the key, its sealed secret, and who it is.
#[derive(Debug, Clone)]
pub struct AccessKeyAuth {
    pub key: AccessKey,
    pub sealed_secret: String,
    pub principal: Principal,
    pub group_ids: Vec<String>,
    pub org: Org,
    /// The organization's policy generation, read with the key so a cached
    /// key carries it (as a cached token does).
    pub org_policy_generation: i64,
}

impl Store {
    pub async fn access_key_create(&self, k: &AccessKey, sealed_secret: &str) -> ApiResult<()> {
        sqlx::query(&format!(
            "INSERT INTO access_keys ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&k.id)
        .bind(&k.org_id)
        .bind(&k.principal_id)
        .bind(&k.description)
        .bind(sealed_secret)
        .bind(k.created_at)
        .bind(k.last_used_at)
        .bind(k.revoked_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("access key", &k.id))?;
        Ok(())
    }

    pub async fn access_key_get(&self, org_id: &str, id: &str) -> ApiResult<Option<AccessKey>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM access_keys WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_key(&r)).transpose().map_err(db_err)
    }

    pub async fn access_key_list(
        &self,
        org_id: &str,
        principal_id: &str,
        page: &PageRequest,
    ) -> ApiResult<Page<AccessKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM access_keys WHERE org_id = $1 AND principal_id = $2 AND id > $3 \
             ORDER BY id LIMIT $4"
        ))
        .bind(org_id)
        .bind(principal_id)
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |k| k.id.clone()))
    }

    /// Revokes a key and forgets its secret; the row stays for the audit trail.
    pub async fn access_key_revoke(
        &self,
        org_id: &str,
        id: &str,
        now: i64,
    ) -> ApiResult<AccessKey> {
        let done = sqlx::query(
            "UPDATE access_keys SET revoked_at = $1, sealed_secret = '' \
             WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(org_id)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        self.bump_epoch();
        let key = self
            .access_key_get(org_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found("access key", id))?;
        if done.rows_affected() == 0 {
            return Err(ApiError::conflict(
                "already_revoked",
                "this access key is already revoked",
            ));
        }
        Ok(key)
    }

    pub async fn access_key_touch(&self, id: &str, now: i64) -> ApiResult<()> {
        sqlx::query("UPDATE access_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Everything a request signed with `id` needs, if the key exists.
    pub async fn access_key_authenticate(&self, id: &str) -> ApiResult<Option<AccessKeyAuth>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM access_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let key = row_to_key(&r).map_err(db_err)?;
        let sealed_secret: String = r.try_get("sealed_secret").map_err(db_err)?;
        let Some(principal) = self.principal_by_id(&key.org_id, &key.principal_id).await? else {
            return Ok(None);
        };
        let Some(org) = self.org_get(&key.org_id).await? else {
            return Ok(None);
        };
        let group_ids: Vec<String> =
            sqlx::query_scalar("SELECT group_id FROM group_members WHERE principal_id = $1")
                .bind(&principal.id)
                .fetch_all(&self.read)
                .await
                .map_err(db_err)?;
        let org_policy_generation = self.org_policy_generation(&org.id).await?;
        Ok(Some(AccessKeyAuth {
            key,
            sealed_secret,
            principal,
            group_ids,
            org,
            org_policy_generation,
        }))
    }
}
