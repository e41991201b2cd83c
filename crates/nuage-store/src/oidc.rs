//! OIDC federation state: each organization's identity provider, pending
//! logins (single use: taking one deletes it) and users linked to a
//! provider subject.

use nuage_core::model::{OidcConfig, Principal};
use nuage_core::{ApiError, ApiResult};
use sqlx::Row;

use crate::principals::{insert_principal, row_to_principal, COLS as PCOLS};
use crate::{db_err, from_json_text, json_text, Store};

/// A login between redirect and callback.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    pub state: String,
    pub org_id: String,
    pub pkce_verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub created_at: i64,
}

impl Store {
    /// The provider of an organization, with its client secret.
    pub async fn oidc_get(&self, org_id: &str) -> ApiResult<Option<(OidcConfig, String)>> {
        let row = sqlx::query(
            "SELECT issuer, client_id, client_secret, username_claim, groups_claim, group_mappings, \
             generation, created_at, updated_at FROM oidc_providers WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let decode = || -> Result<(OidcConfig, String), sqlx::Error> {
            let secret: String = r.try_get("client_secret")?;
            Ok((
                OidcConfig {
                    issuer: r.try_get("issuer")?,
                    client_id: r.try_get("client_id")?,
                    has_client_secret: !secret.is_empty(),
                    username_claim: r.try_get("username_claim")?,
                    groups_claim: r.try_get("groups_claim")?,
                    group_mappings: from_json_text(&r.try_get::<String, _>("group_mappings")?)?,
                    generation: r.try_get("generation")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                },
                secret,
            ))
        };
        decode().map(Some).map_err(db_err)
    }

    /// Creates or replaces the provider of an organization.
    pub async fn oidc_put(&self, org_id: &str, c: &OidcConfig, secret: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query("DELETE FROM oidc_providers WHERE org_id = $1")
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO oidc_providers (org_id, issuer, client_id, client_secret, username_claim, \
             groups_claim, group_mappings, generation, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(org_id)
        .bind(&c.issuer)
        .bind(&c.client_id)
        .bind(secret)
        .bind(&c.username_claim)
        .bind(&c.groups_claim)
        .bind(json_text(&c.group_mappings)?)
        .bind(c.generation)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    pub async fn oidc_delete(&self, org_id: &str) -> ApiResult<bool> {
        let done = sqlx::query("DELETE FROM oidc_providers WHERE org_id = $1")
            .bind(org_id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn oidc_login_put(&self, p: &PendingLogin) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO oidc_logins (state, org_id, pkce_verifier, nonce, redirect_uri, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&p.state)
        .bind(&p.org_id)
        .bind(&p.pkce_verifier)
        .bind(&p.nonce)
        .bind(&p.redirect_uri)
        .bind(p.created_at)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Takes (reads and deletes) a pending login; a state works once.
    pub async fn oidc_login_take(&self, state: &str) -> ApiResult<Option<PendingLogin>> {
        let row = sqlx::query(
            "DELETE FROM oidc_logins WHERE state = $1 \
             RETURNING state, org_id, pkce_verifier, nonce, redirect_uri, created_at",
        )
        .bind(state)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let decode = || -> Result<PendingLogin, sqlx::Error> {
            Ok(PendingLogin {
                state: r.try_get("state")?,
                org_id: r.try_get("org_id")?,
                pkce_verifier: r.try_get("pkce_verifier")?,
                nonce: r.try_get("nonce")?,
                redirect_uri: r.try_get("redirect_uri")?,
                created_at: r.try_get("created_at")?,
            })
        };
        decode().map(Some).map_err(db_err)
    }

    /// Forgets logins started before `before` (never finished).
    pub async fn oidc_login_expire(&self, before: i64) -> ApiResult<u64> {
        let done = sqlx::query("DELETE FROM oidc_logins WHERE created_at < $1")
            .bind(before)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    pub async fn principal_by_external_id(
        &self,
        org_id: &str,
        external_id: &str,
    ) -> ApiResult<Option<Principal>> {
        let row = sqlx::query(&format!(
            "SELECT {PCOLS} FROM principals p WHERE p.org_id = $1 AND p.external_id = $2"
        ))
        .bind(org_id)
        .bind(external_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_principal(&r))
            .transpose()
            .map_err(db_err)
    }

    /// Creates a user linked to a provider subject.
    pub async fn principal_create_external(
        &self,
        p: &Principal,
        external_id: &str,
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        insert_principal(&mut tx, p, None).await.map_err(|e| {
            if e.code == "already_exists" {
                ApiError::conflict(
                    "name_taken",
                    format!("a local user named {:?} already exists; the provider's user cannot take that name", p.name),
                )
            } else {
                e
            }
        })?;
        sqlx::query("UPDATE principals SET external_id = $1 WHERE id = $2")
            .bind(external_id)
            .bind(&p.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Adds a membership unless present.
    pub async fn group_member_ensure(&self, group_id: &str, principal_id: &str) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO group_members (group_id, principal_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (group_id, principal_id) DO NOTHING",
        )
        .bind(group_id)
        .bind(principal_id)
        .bind(nuage_core::time::now_ms())
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }
}
