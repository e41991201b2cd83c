//! API and session tokens. The store sees only a hash of each secret; the
//! lookup by hash is the whole authentication query.

use nuage_core::model::{Org, Principal, Token};
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::principals::{row_to_principal, COLS as PCOLS};
use crate::{db_err, from_json_text, insert_err, Store};

const COLS: &str = "t.id, t.name, t.principal_id, t.kind, t.mfa, t.expires_at, t.revoked_at, \
    t.last_used_at, t.created_at";

/// A token about to be stored.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: Token,
    pub org_id: String,
    pub secret_hash: String,
}

/// A token found by its secret, with its principal and the principal's groups.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub token: Token,
    pub principal: Principal,
    pub group_ids: Vec<String>,
    /// Generation of the organization's custom policies (0 for operators).
    pub org_policy_generation: i64,
    /// Roles the organization grants only to sessions with a second factor.
    pub org_mfa_roles: Vec<String>,
    /// The principal's organization (`None` for operators).
    pub org: Option<Org>,
}

fn row_to_token(r: &AnyRow) -> Result<Token, sqlx::Error> {
    Ok(Token {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        principal_id: r.try_get("principal_id")?,
        kind: r.try_get("kind")?,
        mfa: r.try_get::<i64, _>("mfa")? != 0,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_used_at: r.try_get("last_used_at")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(crate) async fn insert_token(tx: &mut Transaction<'_, Any>, t: &NewToken) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO tokens (id, principal_id, org_id, name, kind, secret_hash, mfa, expires_at, \
         revoked_at, last_used_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9)",
    )
    .bind(&t.token.id)
    .bind(&t.token.principal_id)
    .bind(&t.org_id)
    .bind(&t.token.name)
    .bind(&t.token.kind)
    .bind(&t.secret_hash)
    .bind(i64::from(t.token.mfa))
    .bind(t.token.expires_at)
    .bind(t.token.created_at)
    .execute(&mut **tx)
    .await
    .map_err(insert_err("token", &t.token.name))?;
    Ok(())
}

impl Store {
    pub async fn token_create(&self, t: &NewToken) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        insert_token(&mut tx, t).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Finds the token whose secret hashes to `secret_hash`. Validity
    /// (expiry, revocation) is the caller's decision, so it can say which.
    pub async fn token_authenticate(&self, secret_hash: &str) -> ApiResult<Option<TokenAuth>> {
        let row = sqlx::query(&format!(
            "SELECT t.id AS t_id, t.name AS t_name, t.kind AS t_kind, t.mfa AS t_mfa, \
             t.expires_at AS t_expires_at, t.revoked_at AS t_revoked_at, \
             t.last_used_at AS t_last_used_at, t.created_at AS t_created_at, {PCOLS}, \
             COALESCE(o.policy_generation, 0) AS o_policy_generation, \
             COALESCE(o.mfa_required_roles, '[]') AS o_mfa_roles, o.id AS o_id, o.name AS o_name, \
             o.display_name AS o_display_name, o.max_projects AS o_max_projects, \
             o.generation AS o_generation, o.created_at AS o_created_at, o.updated_at AS o_updated_at \
             FROM tokens t JOIN principals p ON p.id = t.principal_id \
             LEFT JOIN orgs o ON o.id = p.org_id WHERE t.secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        type Decoded = (Token, Principal, i64, Vec<String>, Option<Org>);
        let decode = || -> Result<Decoded, sqlx::Error> {
            let principal = row_to_principal(&r)?;
            let token = Token {
                id: r.try_get("t_id")?,
                name: r.try_get("t_name")?,
                principal_id: principal.id.clone(),
                kind: r.try_get("t_kind")?,
                mfa: r.try_get::<i64, _>("t_mfa")? != 0,
                expires_at: r.try_get("t_expires_at")?,
                revoked_at: r.try_get("t_revoked_at")?,
                last_used_at: r.try_get("t_last_used_at")?,
                created_at: r.try_get("t_created_at")?,
            };
            let generation: i64 = r.try_get("o_policy_generation")?;
            let mfa_roles: Vec<String> = from_json_text(&r.try_get::<String, _>("o_mfa_roles")?)?;
            let org = match r.try_get::<Option<String>, _>("o_id")? {
                Some(id) => Some(Org {
                    id,
                    name: r.try_get("o_name")?,
                    display_name: r.try_get("o_display_name")?,
                    mfa_required_roles: mfa_roles.clone(),
                    max_projects: r.try_get("o_max_projects")?,
                    generation: r.try_get("o_generation")?,
                    created_at: r.try_get("o_created_at")?,
                    updated_at: r.try_get("o_updated_at")?,
                }),
                None => None,
            };
            Ok((token, principal, generation, mfa_roles, org))
        };
        let (token, principal, org_policy_generation, org_mfa_roles, org) =
            decode().map_err(db_err)?;
        let group_ids: Vec<String> =
            sqlx::query_scalar("SELECT group_id FROM group_members WHERE principal_id = $1")
                .bind(&principal.id)
                .fetch_all(&self.read)
                .await
                .map_err(db_err)?;
        Ok(Some(TokenAuth {
            token,
            principal,
            group_ids,
            org_policy_generation,
            org_mfa_roles,
            org,
        }))
    }

    /// Records use; callers throttle this so reads do not become writes.
    pub async fn token_touch(&self, id: &str, now: i64) -> ApiResult<()> {
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn token_get(&self, org_id: &str, id: &str) -> ApiResult<Option<Token>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM tokens t WHERE t.org_id = $1 AND t.id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_token(&r)).transpose().map_err(db_err)
    }

    /// Tokens of an organization ('' for operators), optionally of one
    /// principal, in id (creation) order.
    pub async fn token_list(
        &self,
        org_id: &str,
        principal_id: Option<&str>,
        page: &PageRequest,
    ) -> ApiResult<Page<Token>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM tokens t WHERE t.org_id = $1 AND ($2 = '' OR t.principal_id = $2) \
             AND t.id > $3 ORDER BY t.id LIMIT $4"
        ))
        .bind(org_id)
        .bind(principal_id.unwrap_or_default())
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_token)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |t| t.id.clone()))
    }

    pub async fn token_revoke(&self, org_id: &str, id: &str, now: i64) -> ApiResult<Token> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(org_id)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        let token = self
            .token_get(org_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found("token", id))?;
        if done.rows_affected() == 0 && token.revoked_at.is_none() {
            return Err(ApiError::not_found("token", id));
        }
        self.bump_epoch();
        Ok(token)
    }
}
