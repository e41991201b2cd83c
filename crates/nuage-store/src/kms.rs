//! Rows of the key service. Values here are already sealed or wrapped by
//! `nuage-kms`; this module only keeps them consistent (versions move with
//! their key in one transaction, destruction removes every wrapped form).

use nuage_core::page::{Page, PageRequest};
use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::orgs::check_generation;
use crate::{db_err, insert_err, Backend, Store};

/// The sealed platform root key (one row).
#[derive(Debug, Clone)]
pub struct RootRow {
    pub method: String,
    pub params: String,
    pub sealed_root: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct ManagerRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub kind: String,
    /// JSON of the non-secret endpoint settings.
    pub config: String,
    pub sealed_secret: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub manager_id: Option<String>,
    pub state: String,
    pub primary_version: i64,
    /// JSON array of accepted purposes; `None` accepts all.
    pub justifications: Option<String>,
    pub destroy_at: Option<i64>,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct KeyVersionRow {
    pub key_id: String,
    pub version: i64,
    pub state: String,
    /// Key material wrapped by the root key (internal keys).
    pub material: Option<String>,
    /// Key id on the external manager (external keys).
    pub external_ref: Option<String>,
    pub created_at: i64,
    pub destroyed_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct DataKeyRow {
    pub id: String,
    pub key_id: String,
    pub key_version: i64,
    pub owner: String,
    pub wrapped: String,
    pub created_at: i64,
}

const MANAGER_COLS: &str =
    "id, org_id, name, kind, config, sealed_secret, generation, created_at, updated_at";
const KEY_COLS: &str = "id, org_id, project_id, name, description, manager_id, state, \
     primary_version, justifications, destroy_at, generation, created_at, updated_at";
const VERSION_COLS: &str =
    "key_id, version, state, material, external_ref, created_at, destroyed_at";
pub(crate) const DEK_COLS: &str = "id, key_id, key_version, owner, wrapped, created_at";

fn row_to_manager(r: &AnyRow) -> Result<ManagerRow, sqlx::Error> {
    Ok(ManagerRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        config: r.try_get("config")?,
        sealed_secret: r.try_get("sealed_secret")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn row_to_key(r: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        manager_id: r.try_get("manager_id")?,
        state: r.try_get("state")?,
        primary_version: r.try_get("primary_version")?,
        justifications: r.try_get("justifications")?,
        destroy_at: r.try_get("destroy_at")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn row_to_version(r: &AnyRow) -> Result<KeyVersionRow, sqlx::Error> {
    Ok(KeyVersionRow {
        key_id: r.try_get("key_id")?,
        version: r.try_get("version")?,
        state: r.try_get("state")?,
        material: r.try_get("material")?,
        external_ref: r.try_get("external_ref")?,
        created_at: r.try_get("created_at")?,
        destroyed_at: r.try_get("destroyed_at")?,
    })
}

fn row_to_dek(r: &AnyRow) -> Result<DataKeyRow, sqlx::Error> {
    Ok(DataKeyRow {
        id: r.try_get("id")?,
        key_id: r.try_get("key_id")?,
        key_version: r.try_get("key_version")?,
        owner: r.try_get("owner")?,
        wrapped: r.try_get("wrapped")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    pub async fn kms_root_get(&self) -> ApiResult<Option<RootRow>> {
        let row = sqlx::query(
            "SELECT method, params, sealed_root, created_at FROM kms_root WHERE id = 'root'",
        )
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(RootRow {
                method: r.try_get("method")?,
                params: r.try_get("params")?,
                sealed_root: r.try_get("sealed_root")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
        .map_err(db_err)
    }

    /// Stores the sealed root key unless another server did first; returns
    /// the row that is now in place.
    pub async fn kms_root_init(&self, row: &RootRow) -> ApiResult<RootRow> {
        let inserted = sqlx::query(
            "INSERT INTO kms_root (id, method, params, sealed_root, created_at) \
             VALUES ('root', $1, $2, $3, $4)",
        )
        .bind(&row.method)
        .bind(&row.params)
        .bind(&row.sealed_root)
        .bind(row.created_at)
        .execute(&self.write)
        .await;
        match inserted {
            Ok(_) => Ok(row.clone()),
            Err(e) if crate::is_unique_violation(&e) => self
                .kms_root_get()
                .await?
                .ok_or_else(|| ApiError::internal("root key row vanished")),
            Err(e) => Err(db_err(e)),
        }
    }

    pub async fn kms_manager_create(&self, m: &ManagerRow) -> ApiResult<()> {
        sqlx::query(&format!(
            "INSERT INTO kms_managers ({MANAGER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&m.id)
        .bind(&m.org_id)
        .bind(&m.name)
        .bind(&m.kind)
        .bind(&m.config)
        .bind(&m.sealed_secret)
        .bind(m.generation)
        .bind(m.created_at)
        .bind(m.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("key manager", &m.name))?;
        Ok(())
    }

    pub async fn kms_manager_get(
        &self,
        org_id: &str,
        name_or_id: &str,
    ) -> ApiResult<Option<ManagerRow>> {
        let row = sqlx::query(&format!(
            "SELECT {MANAGER_COLS} FROM kms_managers WHERE org_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(org_id)
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_manager(&r)).transpose().map_err(db_err)
    }

    pub async fn kms_manager_by_id(&self, id: &str) -> ApiResult<Option<ManagerRow>> {
        let row = sqlx::query(&format!(
            "SELECT {MANAGER_COLS} FROM kms_managers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_manager(&r)).transpose().map_err(db_err)
    }

    pub async fn kms_manager_list(
        &self,
        org_id: &str,
        page: &PageRequest,
    ) -> ApiResult<Page<ManagerRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {MANAGER_COLS} FROM kms_managers WHERE org_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(org_id)
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(row_to_manager)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(Page::from_rows(items, page.limit, |m| m.name.clone()))
    }

    /// Deletes a manager no key refers to.
    pub async fn kms_manager_delete(
        &self,
        org_id: &str,
        id: &str,
        expected: Option<i64>,
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM kms_managers WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let generation = generation.ok_or_else(|| ApiError::not_found("key manager", id))?;
        check_generation(expected, generation)?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kms_keys WHERE manager_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if users > 0 {
            return Err(ApiError::conflict(
                "manager_in_use",
                format!("{users} key(s) still refer to this key manager"),
            ));
        }
        sqlx::query("DELETE FROM kms_managers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// Inserts a key with its first version.
    pub async fn kms_key_create(&self, k: &KeyRow, v: &KeyVersionRow) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query(&format!(
            "INSERT INTO kms_keys ({KEY_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&k.id)
        .bind(&k.org_id)
        .bind(&k.project_id)
        .bind(&k.name)
        .bind(&k.description)
        .bind(&k.manager_id)
        .bind(&k.state)
        .bind(k.primary_version)
        .bind(&k.justifications)
        .bind(k.destroy_at)
        .bind(k.generation)
        .bind(k.created_at)
        .bind(k.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("key", &k.name))?;
        insert_version(&mut tx, v).await?;
        tx.commit().await.map_err(db_err)
    }

    pub async fn kms_key_get(
        &self,
        project_id: &str,
        name_or_id: &str,
    ) -> ApiResult<Option<KeyRow>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM kms_keys WHERE project_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(project_id)
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_key(&r)).transpose().map_err(db_err)
    }

    pub async fn kms_key_by_id(&self, id: &str) -> ApiResult<Option<KeyRow>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM kms_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        row.map(|r| row_to_key(&r)).transpose().map_err(db_err)
    }

    pub async fn kms_key_list(
        &self,
        project_id: &str,
        page: &PageRequest,
    ) -> ApiResult<Page<KeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM kms_keys WHERE project_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(project_id)
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
        Ok(Page::from_rows(items, page.limit, |k| k.name.clone()))
    }

    pub async fn kms_key_versions(&self, key_id: &str) -> ApiResult<Vec<KeyVersionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM kms_key_versions WHERE key_id = $1 ORDER BY version"
        ))
        .bind(key_id)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_version)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)
    }

    pub async fn kms_key_version(
        &self,
        key_id: &str,
        version: i64,
    ) -> ApiResult<Option<KeyVersionRow>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM kms_key_versions WHERE key_id = $1 AND version = $2"
        ))
        .bind(key_id)
        .bind(version)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_version(&r)).transpose().map_err(db_err)
    }

    /// Changes a key's mutable fields under optimistic concurrency; with a
    /// `new_version`, also adds it and makes it primary.
    pub async fn kms_key_update(
        &self,
        id: &str,
        expected: Option<i64>,
        new_version: Option<&KeyVersionRow>,
        apply: impl FnOnce(&mut KeyRow) -> ApiResult<()>,
    ) -> ApiResult<KeyRow> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM kms_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("key", id))?;
        let mut k = row_to_key(&row).map_err(db_err)?;
        check_generation(expected, k.generation)?;
        let seen = k.generation;
        apply(&mut k)?;
        if let Some(v) = new_version {
            insert_version(&mut tx, v).await?;
            k.primary_version = v.version;
        }
        k.generation = seen + 1;
        k.updated_at = nuage_core::time::now_ms();
        let done = sqlx::query(
            "UPDATE kms_keys SET description = $1, state = $2, primary_version = $3, \
             justifications = $4, destroy_at = $5, generation = $6, updated_at = $7 \
             WHERE id = $8 AND generation = $9",
        )
        .bind(&k.description)
        .bind(&k.state)
        .bind(k.primary_version)
        .bind(&k.justifications)
        .bind(k.destroy_at)
        .bind(k.generation)
        .bind(k.updated_at)
        .bind(&k.id)
        .bind(seen)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::precondition_failed(
                "the key changed concurrently; read it again",
            ));
        }
        tx.commit().await.map_err(db_err)?;
        Ok(k)
    }

    /// Crypto-shredding: forgets every version's material and every data key
    /// wrapped under the key, then makes the engine drop the old pages.
    pub async fn kms_key_destroy(&self, id: &str) -> ApiResult<KeyRow> {
        let now = nuage_core::time::now_ms();
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query(
            "UPDATE kms_key_versions SET material = NULL, state = 'destroyed', destroyed_at = $1 \
             WHERE key_id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM kms_data_keys WHERE key_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "UPDATE kms_keys SET state = 'destroyed', destroy_at = NULL, \
             generation = generation + 1, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        self.scrub().await;
        self.kms_key_by_id(id)
            .await?
            .ok_or_else(|| ApiError::not_found("key", id))
    }

    /// Asks the engine to drop deleted data from its files now: SQLite
    /// overwrites deleted content (`secure_delete`) but keeps old page images
    /// in its write-ahead log until a checkpoint truncates it.
    pub async fn scrub(&self) {
        if self.backend == Backend::Sqlite {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.write)
                .await
            {
                tracing::warn!(error = %e, "WAL checkpoint after a key destruction failed");
            }
        }
    }

    /// Keys whose destruction date has passed.
    pub async fn kms_keys_due(&self, now: i64, limit: i64) -> ApiResult<Vec<KeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM kms_keys WHERE state = 'destroy_scheduled' AND destroy_at <= $1 \
             ORDER BY destroy_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)
    }

    pub async fn kms_data_key_insert(&self, d: &DataKeyRow) -> ApiResult<()> {
        let mut conn = self.write.acquire().await.map_err(db_err)?;
        insert_data_key(&mut conn, d).await.map_err(db_err)
    }

    pub async fn kms_data_key_get(&self, id: &str) -> ApiResult<Option<DataKeyRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DEK_COLS} FROM kms_data_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_dek(&r)).transpose().map_err(db_err)
    }

    pub async fn kms_data_key_delete(&self, id: &str) -> ApiResult<()> {
        sqlx::query("DELETE FROM kms_data_keys WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Data keys of `key_id` wrapped by a version older than `primary`.
    pub async fn kms_data_keys_stale(
        &self,
        key_id: &str,
        primary: i64,
        limit: i64,
    ) -> ApiResult<Vec<DataKeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEK_COLS} FROM kms_data_keys WHERE key_id = $1 AND key_version < $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(key_id)
        .bind(primary)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_dek)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)
    }

    pub async fn kms_data_keys_count_stale(&self, key_id: &str, primary: i64) -> ApiResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM kms_data_keys WHERE key_id = $1 AND key_version < $2",
        )
        .bind(key_id)
        .bind(primary)
        .fetch_one(&self.read)
        .await
        .map_err(db_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Replaces a data key's wrapped form if nobody changed it meanwhile.
    pub async fn kms_data_key_rewrap(
        &self,
        id: &str,
        old_version: i64,
        new_version: i64,
        wrapped: &str,
    ) -> ApiResult<bool> {
        let done = sqlx::query(
            "UPDATE kms_data_keys SET key_version = $1, wrapped = $2 \
             WHERE id = $3 AND key_version = $4",
        )
        .bind(new_version)
        .bind(wrapped)
        .bind(id)
        .bind(old_version)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether a project still holds keys that are not destroyed.
    pub async fn kms_project_has_live_keys(&self, project_id: &str) -> ApiResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM kms_keys WHERE project_id = $1 AND state <> 'destroyed'",
        )
        .bind(project_id)
        .fetch_one(&self.read)
        .await
        .map_err(db_err)?;
        Ok(n > 0)
    }
}

async fn insert_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    v: &KeyVersionRow,
) -> ApiResult<()> {
    sqlx::query(&format!(
        "INSERT INTO kms_key_versions ({VERSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(&v.key_id)
    .bind(v.version)
    .bind(&v.state)
    .bind(&v.material)
    .bind(&v.external_ref)
    .bind(v.created_at)
    .bind(v.destroyed_at)
    .execute(&mut **tx)
    .await
    .map_err(insert_err("key version", &v.key_id))?;
    Ok(())
}

/// Inserts a data key row on `conn` (inside the caller's transaction when
/// the key protects a record written with it).
pub(crate) async fn insert_data_key(
    conn: &mut sqlx::AnyConnection,
    d: &DataKeyRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO kms_data_keys ({DEK_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&d.id)
    .bind(&d.key_id)
    .bind(d.key_version)
    .bind(&d.owner)
    .bind(&d.wrapped)
    .bind(d.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
