//! Object versions, delete markers and the bucket settings that govern
//! them (versioning state, lifecycle rules), in S3's terms.
//!
//! Every write that makes a new latest version reads the bucket's
//! versioning state inside its own transaction, so a write racing with
//! PutBucketVersioning follows one state or the other, never a mix. A
//! never-versioned bucket takes exactly the path it took before versioning
//! existed (the previous version is removed). Rows that lose their place
//! go back to the caller, which removes their bodies and data keys once
//! the transaction has committed.
//!
//! Internally every version keeps its `obv_…` id (body file, AAD, data
//! key owner); clients see "null" for the one version written while the
//! bucket was unversioned or suspended (`null_version`).

use nuage_core::ApiResult;
use rusqlite::OptionalExtension;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::objects::{
    account, insert_object, row_to_bucket, row_to_object, take_current, take_parts, BUCKET_COLS,
    OBJECT_COLS, OBJECT_LIST_COLS,
};
use crate::{db_err, is_unique_violation, key_hex, BucketRow, ObjectRow, PartRow, Replaced, Store};

/// The id clients use for a bucket's null version.
pub const NULL_VERSION: &str = "null";

/// A bucket's versioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled: one version per key, replaced by each write.
    Off,
    Enabled,
    Suspended,
}

impl Versioning {
    pub fn as_str(self) -> &'static str {
        match self {
            Versioning::Off => "",
            Versioning::Enabled => "Enabled",
            Versioning::Suspended => "Suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Versioning> {
        match s {
            "" => Some(Versioning::Off),
            "Enabled" => Some(Versioning::Enabled),
            "Suspended" => Some(Versioning::Suspended),
            _ => None,
        }
    }
}

/// One version of a key as ListObjectVersions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub row: ObjectRow,
    /// A delete marker (no body, no data key).
    pub marker: bool,
    /// The latest version of its key.
    pub latest: bool,
    /// Clients know it as "null".
    pub null: bool,
    pub seq: i64,
}

impl VersionRow {
    /// The version id clients see.
    pub fn label(&self) -> &str {
        if self.null {
            NULL_VERSION
        } else {
            &self.row.version_id
        }
    }
}

/// What a write that makes a new latest version did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// A version with a body that lost its place (its body and data key go).
    pub replaced: Option<Replaced>,
    /// The version id to report: None in a never-versioned bucket.
    pub version_id: Option<String>,
}

/// What a DELETE without a version id did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// A version with a body that is gone for good.
    pub removed: Option<Replaced>,
    /// The delete marker added (its client id), in a versioned bucket.
    pub marker: Option<String>,
}

/// A version removed by id, with the parts of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedVersion {
    pub version: VersionRow,
    pub parts: Vec<PartRow>,
}

impl RemovedVersion {
    /// The body to discard, unless it was a delete marker.
    pub fn body(&self) -> Option<Replaced> {
        (!self.version.marker).then(|| Replaced {
            row: self.version.row.clone(),
            parts: self.parts.clone(),
        })
    }
}

const FLAG_COLS: &str = "is_current, is_marker, null_version, seq";

/// The latest version of `(bucket_id = $1, key_hex = $2)`.
fn latest_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {OBJECT_COLS}, {FLAG_COLS} FROM objects WHERE bucket_id = $1 \
             AND key_hex = $2 AND is_current <> 0"
        )
    })
}

/// [`row_to_version`] for a row of [`latest_sql`] read by
/// [`crate::point_reads`]: the columns by position.
fn point_row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    let flag = |i: usize| r.get::<_, i64>(i).map(|v| v != 0);
    Ok(VersionRow {
        row: ObjectRow {
            version_id: r.get(0)?,
            bucket_id: r.get(1)?,
            key: r.get(2)?,
            size: r.get(3)?,
            etag: r.get(4)?,
            data_key_id: r.get(5)?,
            sealed_meta: r.get(6)?,
            created_at: r.get(7)?,
            part_count: r.get(8)?,
            inline_body: r.get(9)?,
        },
        latest: flag(10)?,
        marker: flag(11)?,
        null: flag(12)?,
        seq: r.get(13)?,
    })
}

fn row_to_version(r: &AnyRow) -> Result<VersionRow, sqlx::Error> {
    let current: i64 = r.try_get("is_current")?;
    let marker: i64 = r.try_get("is_marker")?;
    let null: i64 = r.try_get("null_version")?;
    Ok(VersionRow {
        row: row_to_object(r)?,
        marker: marker != 0,
        latest: current != 0,
        null: null != 0,
        seq: r.try_get("seq")?,
    })
}

async fn mode_of(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
) -> Result<Versioning, sqlx::Error> {
    let v: Option<String> = sqlx::query("SELECT versioning FROM buckets WHERE id = $1")
        .bind(bucket_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("versioning"))
        .transpose()?;
    Ok(v.as_deref()
        .and_then(Versioning::parse)
        .unwrap_or(Versioning::Off))
}

/// What a group of PUTs reads once per bucket instead of once per PUT:
/// its versioning, and whether any quota (the bucket's or its project's)
/// applies. Nothing in a group of PUTs changes either.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BucketTerms {
    pub mode: Versioning,
    pub quotas: bool,
}

pub(crate) async fn bucket_terms(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
) -> Result<BucketTerms, sqlx::Error> {
    let row = sqlx::query(
        "SELECT b.versioning, b.quota_bytes, b.quota_objects, \
           p.storage_quota_bytes, p.storage_quota_objects \
         FROM buckets b JOIN projects p ON p.id = b.project_id WHERE b.id = $1",
    )
    .bind(bucket_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        // A bucket deleted meanwhile: the per-PUT path decides.
        return Ok(BucketTerms {
            mode: Versioning::Off,
            quotas: true,
        });
    };
    let mode: Option<String> = r.try_get("versioning")?;
    let mut quotas = false;
    for c in [
        "quota_bytes",
        "quota_objects",
        "storage_quota_bytes",
        "storage_quota_objects",
    ] {
        quotas |= r.try_get::<i64, _>(c)? > 0;
    }
    Ok(BucketTerms {
        mode: mode
            .as_deref()
            .and_then(Versioning::parse)
            .unwrap_or(Versioning::Off),
        quotas,
    })
}

async fn next_seq(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
    hex: &str,
) -> Result<i64, sqlx::Error> {
    let max: Option<i64> =
        sqlx::query("SELECT MAX(seq) AS m FROM objects WHERE bucket_id = $1 AND key_hex = $2")
            .bind(bucket_id)
            .bind(hex)
            .fetch_one(&mut *conn)
            .await?
            .try_get("m")?;
    Ok(max.unwrap_or(0) + 1)
}

/// The latest version of a key stops being latest.
async fn demote_latest(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
    hex: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE objects SET is_current = 0 WHERE bucket_id = $1 AND key_hex = $2 \
         AND is_current <> 0",
    )
    .bind(bucket_id)
    .bind(hex)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes one version row (and its parts' rows), returning it.
async fn remove_row(
    conn: &mut sqlx::AnyConnection,
    v: VersionRow,
) -> Result<RemovedVersion, sqlx::Error> {
    sqlx::query("DELETE FROM objects WHERE version_id = $1")
        .bind(&v.row.version_id)
        .execute(&mut *conn)
        .await?;
    account(conn, &v.row.bucket_id, -v.row.size, -1).await?;
    let parts = if v.row.part_count > 0 {
        take_parts(conn, &v.row.version_id).await?
    } else {
        Vec::new()
    };
    Ok(RemovedVersion { version: v, parts })
}

/// Removes the key's null version, whatever its place (suspended writes
/// replace it).
async fn take_null(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
    hex: &str,
) -> Result<Option<Replaced>, sqlx::Error> {
    let found = sqlx::query(&format!(
        "SELECT {OBJECT_COLS}, {FLAG_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
         AND null_version = 1"
    ))
    .bind(bucket_id)
    .bind(hex)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| row_to_version(&r))
    .transpose()?;
    match found {
        Some(v) => Ok(remove_row(conn, v).await?.body()),
        None => Ok(None),
    }
}

/// Inserts a version (object or marker) as the latest of its key.
async fn insert_latest(
    conn: &mut sqlx::AnyConnection,
    o: &ObjectRow,
    hex: &str,
    marker: bool,
    null: bool,
    seq: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO objects (version_id, bucket_id, object_key, key_hex, is_current, size, \
         etag, data_key_id, sealed_meta, created_at, part_count, is_marker, null_version, seq, \
         inline_body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&o.version_id)
    .bind(&o.bucket_id)
    .bind(&o.key)
    .bind(hex)
    .bind(if marker { 2i64 } else { 1i64 })
    .bind(o.size)
    .bind(&o.etag)
    .bind(&o.data_key_id)
    .bind(&o.sealed_meta)
    .bind(o.created_at)
    .bind(o.part_count)
    .bind(i64::from(marker))
    .bind(i64::from(null))
    .bind(seq)
    .bind(&o.inline_body)
    .execute(&mut *conn)
    .await?;
    account(conn, &o.bucket_id, o.size, 1).await
}

/// Makes `o` the latest version of its key as the bucket's versioning
/// state says, inside the caller's transaction.
pub(crate) async fn place_version(
    conn: &mut sqlx::AnyConnection,
    o: &ObjectRow,
    hex: &str,
) -> Result<Placed, sqlx::Error> {
    let mode = mode_of(conn, &o.bucket_id).await?;
    place_version_as(conn, o, hex, mode).await
}

/// [`place_version`] in a bucket whose versioning state is known.
pub(crate) async fn place_version_as(
    conn: &mut sqlx::AnyConnection,
    o: &ObjectRow,
    hex: &str,
    mode: Versioning,
) -> Result<Placed, sqlx::Error> {
    match mode {
        Versioning::Off => {
            let replaced = take_current(conn, &o.bucket_id, hex).await?;
            insert_object(conn, o, hex).await?;
            Ok(Placed {
                replaced,
                version_id: None,
            })
        }
        Versioning::Enabled => {
            let seq = next_seq(conn, &o.bucket_id, hex).await?;
            demote_latest(conn, &o.bucket_id, hex).await?;
            insert_latest(conn, o, hex, false, false, seq).await?;
            Ok(Placed {
                replaced: None,
                version_id: Some(o.version_id.clone()),
            })
        }
        Versioning::Suspended => {
            let replaced = take_null(conn, &o.bucket_id, hex).await?;
            let seq = next_seq(conn, &o.bucket_id, hex).await?;
            demote_latest(conn, &o.bucket_id, hex).await?;
            insert_latest(conn, o, hex, false, true, seq).await?;
            Ok(Placed {
                replaced,
                version_id: Some(NULL_VERSION.to_string()),
            })
        }
    }
}

fn marker_row(bucket_id: &str, key: &str, version_id: &str, now: i64) -> ObjectRow {
    ObjectRow {
        version_id: version_id.to_string(),
        bucket_id: bucket_id.to_string(),
        key: key.to_string(),
        size: 0,
        etag: String::new(),
        data_key_id: String::new(),
        sealed_meta: String::new(),
        created_at: now,
        part_count: 0,
        inline_body: None,
    }
}

impl Store {
    pub async fn bucket_versioning(&self, bucket_id: &str) -> ApiResult<Versioning> {
        let mut conn = self.read.acquire().await.map_err(db_err)?;
        mode_of(&mut conn, bucket_id).await.map_err(db_err)
    }

    pub async fn bucket_versioning_set(&self, bucket_id: &str, v: Versioning) -> ApiResult<()> {
        sqlx::query("UPDATE buckets SET versioning = $1, updated_at = $2 WHERE id = $3")
            .bind(v.as_str())
            .bind(nuage_core::time::now_ms())
            .bind(bucket_id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        self.buckets.epoch.bump();
        Ok(())
    }

    /// The bucket's lifecycle rules as stored ('' for none).
    pub async fn bucket_lifecycle(&self, bucket_id: &str) -> ApiResult<String> {
        let row = sqlx::query("SELECT lifecycle FROM buckets WHERE id = $1")
            .bind(bucket_id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => r.try_get("lifecycle").map_err(db_err),
            None => Ok(String::new()),
        }
    }

    /// Stores (or with '' removes) the bucket's lifecycle rules.
    pub async fn bucket_lifecycle_set(&self, bucket_id: &str, rules: &str) -> ApiResult<()> {
        sqlx::query("UPDATE buckets SET lifecycle = $1, updated_at = $2 WHERE id = $3")
            .bind(rules)
            .bind(nuage_core::time::now_ms())
            .bind(bucket_id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        self.buckets.epoch.bump();
        Ok(())
    }

    /// Buckets with lifecycle rules, by id after `after`, at most `limit`,
    /// each with its rules.
    pub async fn buckets_with_lifecycle(
        &self,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<(BucketRow, String)>> {
        let rows = sqlx::query(&format!(
            "SELECT {BUCKET_COLS}, lifecycle FROM buckets WHERE lifecycle <> '' AND id > $1 \
             ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((row_to_bucket(r)?, r.try_get("lifecycle")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err)
    }

    /// The latest version (object or delete marker) of a key.
    pub async fn version_latest(
        &self,
        bucket_id: &str,
        key: &str,
    ) -> ApiResult<Option<VersionRow>> {
        let sql = latest_sql();
        let key_hex = key_hex(key);
        if let Some(found) = self.point_reads.as_ref().and_then(|p| {
            p.with(|c| {
                c.prepare_cached(sql)?
                    .query_row((bucket_id, key_hex.as_str()), point_row_to_version)
                    .optional()
            })
        }) {
            return Ok(found);
        }
        let row = sqlx::query(sql)
            .bind(bucket_id)
            .bind(key_hex)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        row.map(|r| row_to_version(&r)).transpose().map_err(db_err)
    }

    /// A version of a key by the id clients use ("null" or `obv_…`).
    pub async fn version_get(
        &self,
        bucket_id: &str,
        key: &str,
        version_id: &str,
    ) -> ApiResult<Option<VersionRow>> {
        let mut conn = self.read.acquire().await.map_err(db_err)?;
        find_version(&mut conn, bucket_id, &key_hex(key), version_id)
            .await
            .map_err(db_err)
    }

    /// Versions under `prefix_hex` by key (bytes) then newest first, after
    /// the cursor: keys after `after_hex`, and with `after_seq` also the
    /// older versions of that very key; at most `limit`.
    pub async fn version_list(
        &self,
        bucket_id: &str,
        prefix_hex: &str,
        after_hex: &str,
        after_seq: Option<i64>,
        limit: i64,
    ) -> ApiResult<Vec<VersionRow>> {
        // No key is empty: comparing with "" disables the same-key branch.
        let same_key = if after_seq.is_some() { after_hex } else { "" };
        let upper = format!("{prefix_hex}g");
        let rows = sqlx::query(&format!(
            "SELECT {OBJECT_LIST_COLS}, {FLAG_COLS} FROM objects WHERE bucket_id = $1 \
             AND key_hex >= $2 AND key_hex < $3 \
             AND (key_hex > $4 OR (key_hex = $5 AND seq < $6)) \
             ORDER BY key_hex, seq DESC LIMIT $7"
        ))
        .bind(bucket_id)
        .bind(prefix_hex)
        .bind(&upper)
        .bind(after_hex)
        .bind(same_key)
        .bind(after_seq.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_version)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// DELETE without a version id. A never-versioned bucket removes the
    /// current version; a versioned one adds delete marker `marker_id`
    /// (suspended: as the null version, replacing the previous one). With
    /// `only_if_current`, nothing happens unless that version is still the
    /// current object (lifecycle expiration racing with writers).
    pub async fn object_delete_latest(
        &self,
        bucket_id: &str,
        key: &str,
        marker_id: &str,
        now: i64,
        only_if_current: Option<&str>,
    ) -> ApiResult<Deleted> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .delete_latest_once(bucket_id, key, marker_id, now, only_if_current)
                .await
            {
                Err(e) if is_unique_violation(&e) && tries < 5 => continue,
                r => return r.map_err(db_err),
            }
        }
    }

    async fn delete_latest_once(
        &self,
        bucket_id: &str,
        key: &str,
        marker_id: &str,
        now: i64,
        only_if_current: Option<&str>,
    ) -> Result<Deleted, sqlx::Error> {
        let hex = key_hex(key);
        let mut tx = self.write.begin().await?;
        if let Some(expected) = only_if_current {
            let cur = sqlx::query(
                "SELECT version_id FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
                 AND is_current = 1 AND version_id = $3",
            )
            .bind(bucket_id)
            .bind(&hex)
            .bind(expected)
            .fetch_optional(&mut *tx)
            .await?;
            if cur.is_none() {
                return Ok(Deleted::default());
            }
        }
        let out = match mode_of(&mut tx, bucket_id).await? {
            Versioning::Off => Deleted {
                removed: take_current(&mut tx, bucket_id, &hex).await?,
                marker: None,
            },
            Versioning::Enabled => {
                let seq = next_seq(&mut tx, bucket_id, &hex).await?;
                demote_latest(&mut tx, bucket_id, &hex).await?;
                let m = marker_row(bucket_id, key, marker_id, now);
                insert_latest(&mut tx, &m, &hex, true, false, seq).await?;
                Deleted {
                    removed: None,
                    marker: Some(marker_id.to_string()),
                }
            }
            Versioning::Suspended => {
                let removed = take_null(&mut tx, bucket_id, &hex).await?;
                let seq = next_seq(&mut tx, bucket_id, &hex).await?;
                demote_latest(&mut tx, bucket_id, &hex).await?;
                let m = marker_row(bucket_id, key, marker_id, now);
                insert_latest(&mut tx, &m, &hex, true, true, seq).await?;
                Deleted {
                    removed,
                    marker: Some(NULL_VERSION.to_string()),
                }
            }
        };
        tx.commit().await?;
        Ok(out)
    }

    /// Removes one version for good ("null" or `obv_…`); when it was the
    /// latest, the next newest version (object or marker) becomes latest.
    /// With `noncurrent_only` a version that is latest stays; with
    /// `alone_only` a version that is not its key's only one stays
    /// (lifecycle rules racing with writers). None when nothing went.
    pub async fn object_delete_version(
        &self,
        bucket_id: &str,
        key: &str,
        version_id: &str,
        noncurrent_only: bool,
        alone_only: bool,
    ) -> ApiResult<Option<RemovedVersion>> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .delete_version_once(bucket_id, key, version_id, noncurrent_only, alone_only)
                .await
            {
                Err(e) if is_unique_violation(&e) && tries < 5 => continue,
                r => return r.map_err(db_err),
            }
        }
    }

    async fn delete_version_once(
        &self,
        bucket_id: &str,
        key: &str,
        version_id: &str,
        noncurrent_only: bool,
        alone_only: bool,
    ) -> Result<Option<RemovedVersion>, sqlx::Error> {
        let hex = key_hex(key);
        let mut tx = self.write.begin().await?;
        let Some(v) = find_version(&mut tx, bucket_id, &hex, version_id).await? else {
            return Ok(None);
        };
        if noncurrent_only && v.latest {
            return Ok(None);
        }
        if alone_only {
            let others = sqlx::query(
                "SELECT version_id FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
                 AND version_id <> $3 LIMIT 1",
            )
            .bind(bucket_id)
            .bind(&hex)
            .bind(&v.row.version_id)
            .fetch_optional(&mut *tx)
            .await?;
            if others.is_some() {
                return Ok(None);
            }
        }
        let was_latest = v.latest;
        let removed = remove_row(&mut tx, v).await?;
        if was_latest {
            let next = sqlx::query(
                "SELECT version_id, is_marker FROM objects WHERE bucket_id = $1 \
                 AND key_hex = $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(bucket_id)
            .bind(&hex)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(n) = next {
                let id: String = n.try_get("version_id")?;
                let marker: i64 = n.try_get("is_marker")?;
                sqlx::query("UPDATE objects SET is_current = $1 WHERE version_id = $2")
                    .bind(if marker != 0 { 2i64 } else { 1i64 })
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(Some(removed))
    }
}

async fn find_version(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
    hex: &str,
    version_id: &str,
) -> Result<Option<VersionRow>, sqlx::Error> {
    let by_null = format!(
        "SELECT {OBJECT_COLS}, {FLAG_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
         AND null_version = 1"
    );
    let by_id = format!(
        "SELECT {OBJECT_COLS}, {FLAG_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
         AND null_version = 0 AND version_id = $3"
    );
    let q = if version_id == NULL_VERSION {
        sqlx::query(&by_null).bind(bucket_id).bind(hex)
    } else {
        sqlx::query(&by_id)
            .bind(bucket_id)
            .bind(hex)
            .bind(version_id)
    };
    q.fetch_optional(&mut *conn)
        .await?
        .map(|r| row_to_version(&r))
        .transpose()
}
