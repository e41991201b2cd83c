//! Stored responses of mutations sent with an `Idempotency-Key`, so a client
//! that retries after a timeout gets the first answer instead of a duplicate.

use nuage_core::ApiResult;
use sqlx::Row;

use crate::{db_err, is_unique_violation, Store};

#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub request_hash: String,
    pub status: u16,
    pub body: String,
    /// What the first request was authorized by (JSON; empty for none).
    pub checks: String,
}

impl Store {
    pub async fn idempotency_get(
        &self,
        principal_id: &str,
        key: &str,
    ) -> ApiResult<Option<StoredResponse>> {
        let row = sqlx::query(
            "SELECT request_hash, status, body, checks FROM idempotency_keys WHERE principal_id = $1 AND idem_key = $2",
        )
        .bind(principal_id)
        .bind(key)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let decode = || -> Result<StoredResponse, sqlx::Error> {
            Ok(StoredResponse {
                request_hash: r.try_get("request_hash")?,
                status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(500),
                body: r.try_get("body")?,
                checks: r.try_get("checks")?,
            })
        };
        decode().map(Some).map_err(db_err)
    }

    /// Keeps the first response for a key; a concurrent duplicate is ignored.
    pub async fn idempotency_put(
        &self,
        principal_id: &str,
        key: &str,
        resp: &StoredResponse,
        now: i64,
    ) -> ApiResult<()> {
        let r = sqlx::query(
            "INSERT INTO idempotency_keys (principal_id, idem_key, request_hash, status, body, checks, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(principal_id)
        .bind(key)
        .bind(&resp.request_hash)
        .bind(i64::from(resp.status))
        .bind(&resp.body)
        .bind(&resp.checks)
        .bind(now)
        .execute(&self.write)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Ok(()),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Forgets keys older than `before` (milliseconds).
    pub async fn idempotency_expire(&self, before: i64) -> ApiResult<u64> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}
