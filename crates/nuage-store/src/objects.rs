//! Rows of object storage: buckets and object versions. Bodies live in files
//! (see `nuage-objects`); a version becomes visible only when its row is
//! committed here, which is what makes a PUT atomic.

use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, insert_err, is_unique_violation, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    /// The project key that wraps the data keys of the bucket's objects.
    pub key_id: String,
    pub key_name: String,
    pub created_by: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    pub version_id: String,
    pub bucket_id: String,
    pub key: String,
    pub size: i64,
    pub etag: String,
    pub data_key_id: String,
    /// Base64 of the metadata sealed under the object's data key.
    pub sealed_meta: String,
    pub created_at: i64,
}

const BUCKET_COLS: &str =
    "id, org_id, project_id, name, key_id, key_name, created_by, generation, created_at, updated_at";
const OBJECT_COLS: &str =
    "version_id, bucket_id, object_key, size, etag, data_key_id, sealed_meta, created_at";

fn row_to_bucket(r: &AnyRow) -> Result<BucketRow, sqlx::Error> {
    Ok(BucketRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        key_id: r.try_get("key_id")?,
        key_name: r.try_get("key_name")?,
        created_by: r.try_get("created_by")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn row_to_object(r: &AnyRow) -> Result<ObjectRow, sqlx::Error> {
    Ok(ObjectRow {
        version_id: r.try_get("version_id")?,
        bucket_id: r.try_get("bucket_id")?,
        key: r.try_get("object_key")?,
        size: r.try_get("size")?,
        etag: r.try_get("etag")?,
        data_key_id: r.try_get("data_key_id")?,
        sealed_meta: r.try_get("sealed_meta")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The sort key of an object key: its bytes in lowercase hex.
pub fn key_hex(key: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(key.len() * 2);
    for b in key.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

impl Store {
    pub async fn bucket_create(&self, b: &BucketRow) -> ApiResult<()> {
        sqlx::query(&format!(
            "INSERT INTO buckets ({BUCKET_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&b.id)
        .bind(&b.org_id)
        .bind(&b.project_id)
        .bind(&b.name)
        .bind(&b.key_id)
        .bind(&b.key_name)
        .bind(&b.created_by)
        .bind(b.generation)
        .bind(b.created_at)
        .bind(b.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("bucket", &b.name))?;
        Ok(())
    }

    /// A bucket by its installation-wide name.
    pub async fn bucket_get(&self, name: &str) -> ApiResult<Option<BucketRow>> {
        let row = sqlx::query(&format!(
            "SELECT {BUCKET_COLS} FROM buckets WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_bucket(&r)).transpose().map_err(db_err)
    }

    /// Buckets of an organization (of one project when given), by name,
    /// after `after`, at most `limit`.
    pub async fn bucket_list(
        &self,
        org_id: &str,
        project_id: Option<&str>,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<BucketRow>> {
        let by_project = format!(
            "SELECT {BUCKET_COLS} FROM buckets WHERE org_id = $1 AND project_id = $2 \
             AND name > $3 ORDER BY name LIMIT $4"
        );
        let by_org = format!(
            "SELECT {BUCKET_COLS} FROM buckets WHERE org_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        );
        let rows = match project_id {
            Some(p) => sqlx::query(&by_project)
                .bind(org_id)
                .bind(p)
                .bind(after)
                .bind(limit),
            None => sqlx::query(&by_org).bind(org_id).bind(after).bind(limit),
        }
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_bucket)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Deletes an empty bucket; one holding objects is a `bucket_not_empty`
    /// conflict (checked in the deleting transaction).
    pub async fn bucket_delete(&self, id: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let any = sqlx::query("SELECT version_id FROM objects WHERE bucket_id = $1 LIMIT 1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if any.is_some() {
            return Err(ApiError::conflict(
                "bucket_not_empty",
                "the bucket holds objects; delete them first",
            ));
        }
        let done = sqlx::query("DELETE FROM buckets WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::not_found("bucket", id));
        }
        tx.commit().await.map_err(db_err)
    }

    pub async fn object_get(&self, bucket_id: &str, key: &str) -> ApiResult<Option<ObjectRow>> {
        let row = sqlx::query(&format!(
            "SELECT {OBJECT_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
             AND is_current = 1"
        ))
        .bind(bucket_id)
        .bind(key_hex(key))
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_object(&r)).transpose().map_err(db_err)
    }

    /// Makes `o` the current version of its key in one transaction and
    /// returns the version it replaced (unversioned buckets drop it; the
    /// caller removes its body once this has committed). Concurrent writers
    /// of one key: the last to commit wins.
    pub async fn object_put(&self, o: &ObjectRow) -> ApiResult<Option<ObjectRow>> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.object_put_once(o).await {
                Err(e) if is_unique_violation(&e) && tries < 5 => continue,
                r => return r.map_err(db_err),
            }
        }
    }

    async fn object_put_once(&self, o: &ObjectRow) -> Result<Option<ObjectRow>, sqlx::Error> {
        let hex = key_hex(&o.key);
        let mut tx = self.write.begin().await?;
        let old = sqlx::query(&format!(
            "SELECT {OBJECT_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
             AND is_current = 1"
        ))
        .bind(&o.bucket_id)
        .bind(&hex)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| row_to_object(&r))
        .transpose()?;
        if let Some(old) = &old {
            sqlx::query("DELETE FROM objects WHERE version_id = $1")
                .bind(&old.version_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO objects (version_id, bucket_id, object_key, key_hex, is_current, size, \
             etag, data_key_id, sealed_meta, created_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9)",
        )
        .bind(&o.version_id)
        .bind(&o.bucket_id)
        .bind(&o.key)
        .bind(&hex)
        .bind(o.size)
        .bind(&o.etag)
        .bind(&o.data_key_id)
        .bind(&o.sealed_meta)
        .bind(o.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(old)
    }

    /// Removes the current version of `key`, returning it.
    pub async fn object_delete(&self, bucket_id: &str, key: &str) -> ApiResult<Option<ObjectRow>> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let old = sqlx::query(&format!(
            "SELECT {OBJECT_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
             AND is_current = 1"
        ))
        .bind(bucket_id)
        .bind(key_hex(key))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .map(|r| row_to_object(&r))
        .transpose()
        .map_err(db_err)?;
        if let Some(old) = &old {
            sqlx::query("DELETE FROM objects WHERE version_id = $1")
                .bind(&old.version_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(old)
    }

    /// Current objects whose hex key is greater than `after_hex` and starts
    /// with `prefix_hex`, in byte order, at most `limit`.
    pub async fn object_list(
        &self,
        bucket_id: &str,
        prefix_hex: &str,
        after_hex: &str,
        limit: i64,
    ) -> ApiResult<Vec<ObjectRow>> {
        // Every hex digit sorts before 'g': `prefix ‖ 'g'` bounds the prefix.
        let upper = format!("{prefix_hex}g");
        let rows = sqlx::query(&format!(
            "SELECT {OBJECT_COLS} FROM objects WHERE bucket_id = $1 AND is_current = 1 \
             AND key_hex >= $2 AND key_hex < $3 AND key_hex > $4 ORDER BY key_hex LIMIT $5"
        ))
        .bind(bucket_id)
        .bind(prefix_hex)
        .bind(&upper)
        .bind(after_hex)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_object)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Whether a version row exists: bodies without one are crash leftovers.
    pub async fn object_version_exists(&self, version_id: &str) -> ApiResult<bool> {
        let row = sqlx::query("SELECT version_id FROM objects WHERE version_id = $1")
            .bind(version_id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }
}
