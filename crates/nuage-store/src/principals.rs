//! Users, service accounts and operators, with their login credentials.
//! Password hashes and TOTP seeds leave this module only through
//! [`Credentials`], which the login path alone asks for.

use nuage_core::model::{Principal, PrincipalKind};
use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::orgs::check_generation;
use crate::{db_err, insert_err, Store};

pub(crate) const COLS: &str = "p.id, p.org_id, p.kind, p.name, p.display_name, p.email, \
    p.description, CASE WHEN p.password_hash IS NULL THEN 0 ELSE 1 END AS has_password, \
    CASE WHEN p.totp_secret IS NULL THEN 0 ELSE 1 END AS mfa_enabled, p.locked_until, \
    p.generation, p.created_at, p.updated_at";

pub(crate) fn row_to_principal(r: &AnyRow) -> Result<Principal, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    Ok(Principal {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        kind: PrincipalKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown principal kind {kind}").into()))?,
        name: r.try_get("name")?,
        display_name: r.try_get("display_name")?,
        email: r.try_get("email")?,
        description: r.try_get("description")?,
        has_password: r.try_get::<i64, _>("has_password")? != 0,
        mfa_enabled: r.try_get::<i64, _>("mfa_enabled")? != 0,
        locked_until: r.try_get("locked_until")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// What the login path needs about a principal.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub principal: Principal,
    pub password_hash: Option<String>,
    pub totp_secret: Option<String>,
    pub totp_pending: Option<String>,
    pub failed_logins: i64,
}

pub(crate) async fn insert_principal(
    tx: &mut Transaction<'_, Any>,
    p: &Principal,
    password_hash: Option<&str>,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO principals (id, org_id, kind, name, display_name, email, description, \
         password_hash, totp_secret, totp_pending, failed_logins, locked_until, generation, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, 0, NULL, $9, $10, $11)",
    )
    .bind(&p.id)
    .bind(&p.org_id)
    .bind(p.kind.as_str())
    .bind(&p.name)
    .bind(&p.display_name)
    .bind(&p.email)
    .bind(&p.description)
    .bind(password_hash.map(str::to_string))
    .bind(p.generation)
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(&mut **tx)
    .await
    .map_err(insert_err(kind_label(p.kind), &p.name))?;
    Ok(())
}

pub fn kind_label(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::User => "user",
        PrincipalKind::ServiceAccount => "service account",
        PrincipalKind::Operator => "operator",
    }
}

impl Store {
    pub async fn principal_create(
        &self,
        p: &Principal,
        password_hash: Option<&str>,
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        insert_principal(&mut tx, p, password_hash).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// A principal of `kind` in `org_id` ('' for operators) by name or id.
    pub async fn principal_get(
        &self,
        org_id: &str,
        kind: PrincipalKind,
        name_or_id: &str,
    ) -> ApiResult<Option<Principal>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM principals p WHERE p.org_id = $1 AND p.kind = $2 \
             AND (p.name = $3 OR p.id = $3)"
        ))
        .bind(org_id)
        .bind(kind.as_str())
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_principal(&r))
            .transpose()
            .map_err(db_err)
    }

    /// A principal of any kind in `org_id` by id.
    pub async fn principal_by_id(&self, org_id: &str, id: &str) -> ApiResult<Option<Principal>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM principals p WHERE p.org_id = $1 AND p.id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_principal(&r))
            .transpose()
            .map_err(db_err)
    }

    pub async fn principal_list(
        &self,
        org_id: &str,
        kind: PrincipalKind,
        page: &PageRequest,
    ) -> ApiResult<Page<Principal>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM principals p WHERE p.org_id = $1 AND p.kind = $2 AND p.name > $3 \
             ORDER BY p.name LIMIT $4"
        ))
        .bind(org_id)
        .bind(kind.as_str())
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_principal)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |p| p.name.clone()))
    }

    pub async fn principal_update(
        &self,
        id: &str,
        expected: Option<i64>,
        apply: impl FnOnce(&mut Principal) -> ApiResult<()>,
    ) -> ApiResult<Principal> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!("SELECT {COLS} FROM principals p WHERE p.id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("principal", id))?;
        let mut p = row_to_principal(&row).map_err(db_err)?;
        check_generation(expected, p.generation)?;
        let seen = p.generation;
        apply(&mut p)?;
        p.generation = seen + 1;
        p.updated_at = nuage_core::time::now_ms();
        let done = sqlx::query(
            "UPDATE principals SET display_name = $1, email = $2, description = $3, \
             generation = $4, updated_at = $5 WHERE id = $6 AND generation = $7",
        )
        .bind(&p.display_name)
        .bind(&p.email)
        .bind(&p.description)
        .bind(p.generation)
        .bind(p.updated_at)
        .bind(&p.id)
        .bind(seen)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::precondition_failed(
                "the principal changed concurrently; read it again",
            ));
        }
        tx.commit().await.map_err(db_err)?;
        self.bump_epoch();
        Ok(p)
    }

    /// Deletes a principal with its tokens, memberships and bindings.
    pub async fn principal_delete(&self, id: &str, expected: Option<i64>) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM principals WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        check_generation(
            expected,
            generation.ok_or_else(|| ApiError::not_found("principal", id))?,
        )?;
        for sql in [
            "DELETE FROM tokens WHERE principal_id = $1",
            "DELETE FROM group_members WHERE principal_id = $1",
            "DELETE FROM role_bindings WHERE subject_id = $1",
            "DELETE FROM principals WHERE id = $1",
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

    /// Credentials for a login attempt (by name, in one realm).
    pub async fn principal_credentials(
        &self,
        org_id: &str,
        kind: PrincipalKind,
        name: &str,
    ) -> ApiResult<Option<Credentials>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS}, p.password_hash, p.totp_secret, p.totp_pending, p.failed_logins \
             FROM principals p WHERE p.org_id = $1 AND p.kind = $2 AND p.name = $3"
        ))
        .bind(org_id)
        .bind(kind.as_str())
        .bind(name)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let decode = || -> Result<Credentials, sqlx::Error> {
            Ok(Credentials {
                principal: row_to_principal(&r)?,
                password_hash: r.try_get("password_hash")?,
                totp_secret: r.try_get("totp_secret")?,
                totp_pending: r.try_get("totp_pending")?,
                failed_logins: r.try_get("failed_logins")?,
            })
        };
        decode().map(Some).map_err(db_err)
    }

    /// Records a failed login; `locked_until` starts a lockout when set.
    pub async fn principal_login_failed(
        &self,
        id: &str,
        failed: i64,
        locked_until: Option<i64>,
    ) -> ApiResult<()> {
        sqlx::query("UPDATE principals SET failed_logins = $1, locked_until = $2 WHERE id = $3")
            .bind(failed)
            .bind(locked_until)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn principal_login_succeeded(&self, id: &str) -> ApiResult<()> {
        sqlx::query("UPDATE principals SET failed_logins = 0, locked_until = NULL WHERE id = $1 AND failed_logins <> 0")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn principal_set_password(&self, id: &str, hash: &str) -> ApiResult<()> {
        sqlx::query(
            "UPDATE principals SET password_hash = $1, failed_logins = 0, locked_until = NULL, \
             generation = generation + 1 WHERE id = $2",
        )
        .bind(hash)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Stores a TOTP seed awaiting confirmation by a first valid code.
    pub async fn principal_set_totp_pending(&self, id: &str, secret: &str) -> ApiResult<()> {
        sqlx::query("UPDATE principals SET totp_pending = $1 WHERE id = $2")
            .bind(secret)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Makes the pending seed the active second factor.
    pub async fn principal_confirm_totp(&self, id: &str) -> ApiResult<()> {
        sqlx::query(
            "UPDATE principals SET totp_secret = totp_pending, totp_pending = NULL, \
             generation = generation + 1 WHERE id = $1 AND totp_pending IS NOT NULL",
        )
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    pub async fn principal_clear_totp(&self, id: &str) -> ApiResult<()> {
        sqlx::query(
            "UPDATE principals SET totp_secret = NULL, totp_pending = NULL, \
             generation = generation + 1 WHERE id = $1",
        )
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        self.bump_epoch();
        Ok(())
    }

    /// Whether any operator exists yet (first start creates one).
    pub async fn operator_count(&self) -> ApiResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM principals WHERE kind = 'operator'")
            .fetch_one(&self.write)
            .await
            .map_err(db_err)
    }
}
