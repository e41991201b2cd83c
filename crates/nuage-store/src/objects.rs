//! Rows of object storage: buckets and object versions. Bodies live in files
//! (see `nuage-objects`); a version becomes visible only when its row is
//! committed here, which is what makes a PUT atomic.
//!
//! Multipart uploads follow the same rule: a part is visible once its row
//! commits, and Complete turns an upload's parts into an object version in
//! one transaction (the rows that lose go back to the caller, whose files
//! it removes after the commit).

use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::kms::{insert_data_key, DataKeyRow};
use crate::versions::{place_version, place_version_as, BucketTerms, Placed};
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
    /// S3-managed settings, a JSON document owned by `nuage-objects`.
    pub settings: String,
    /// What the bucket holds: every version and delete marker.
    pub used_bytes: i64,
    pub used_objects: i64,
    /// 0: no quota.
    pub quota_bytes: i64,
    pub quota_objects: i64,
}

/// See [`Store::bucket_get_with_project`]; every change of a bucket's row
/// but its usage counters bumps the epoch after its commit.
#[derive(Default)]
pub(crate) struct BucketCache {
    pub(crate) epoch: crate::cache::Epoch,
    pub(crate) rows: crate::cache::TtlCache<String, (BucketRow, Option<String>)>,
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
    /// Part files making up the body (0: a single body file, or inline).
    pub part_count: i64,
    /// Base64 of the sealed body of a small object kept in its row (None:
    /// the body is in a file or in parts). Listings do not load bodies:
    /// there an inline body reads as `Some("")`.
    pub inline_body: Option<String>,
}

/// A multipart upload in progress. It reserves the version id (with its
/// data key and sealed metadata) the object will have once completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub upload_id: String,
    pub bucket_id: String,
    pub key: String,
    pub version_id: String,
    pub data_key_id: String,
    pub sealed_meta: String,
    pub created_by: String,
    pub created_at: i64,
}

/// One uploaded part: of an upload in progress, or (`version_id` set) a
/// piece of a completed object's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRow {
    pub part_id: String,
    pub upload_id: String,
    pub part_number: i64,
    pub size: i64,
    pub etag: String,
    pub data_key_id: String,
    pub version_id: Option<String>,
    pub created_at: i64,
    /// The part's additional checksum, "ALGO:base64".
    pub checksum: Option<String>,
}

/// The condition of a conditional write, checked in its transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WriteIf {
    #[default]
    Always,
    /// `If-None-Match: *`: only when the key has no current object.
    Absent,
    /// `If-Match`: only over the current object with this ETag.
    ETag(String),
}

impl WriteIf {
    /// Why a PUT of `key` is refused when its current object has `etag`
    /// (`None`: no current object), if it is.
    fn refusal(&self, key: &str, etag: Option<&str>) -> Option<ApiError> {
        match (self, etag) {
            (WriteIf::Absent, Some(_)) => Some(ApiError::precondition_failed(
                "the key already has an object (If-None-Match: *)",
            )),
            (WriteIf::ETag(_), None) => Some(ApiError::not_found("object", key)),
            (WriteIf::ETag(want), Some(have)) if want != have => Some(
                ApiError::precondition_failed("the object's ETag differs from If-Match"),
            ),
            _ => None,
        }
    }
}

/// A version that lost its place, with the parts of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub row: ObjectRow,
    pub parts: Vec<PartRow>,
}

/// What a completed upload left unreferenced: the previous version of the
/// key and the uploaded parts the client did not list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    pub replaced: Option<Replaced>,
    pub unused: Vec<PartRow>,
    /// The version id to report (None in a never-versioned bucket).
    pub version_id: Option<String>,
}

pub(crate) const BUCKET_COLS: &str =
    "id, org_id, project_id, name, key_id, key_name, created_by, generation, created_at, updated_at, \
     settings, used_bytes, used_objects, quota_bytes, quota_objects";
pub(crate) const OBJECT_COLS: &str = "version_id, bucket_id, object_key, size, etag, data_key_id, \
     sealed_meta, created_at, part_count, inline_body";
/// [`OBJECT_COLS`] for listings: an inline body only as a marker.
pub(crate) const OBJECT_LIST_COLS: &str = "version_id, bucket_id, object_key, size, etag, \
     data_key_id, sealed_meta, created_at, part_count, \
     CASE WHEN inline_body IS NULL THEN NULL ELSE '' END AS inline_body";
const UPLOAD_COLS: &str = "upload_id, bucket_id, object_key, version_id, data_key_id, \
     sealed_meta, created_by, created_at";
pub(crate) const PART_COLS: &str =
    "part_id, upload_id, part_number, size, etag, data_key_id, version_id, created_at, checksum";

pub(crate) fn row_to_bucket(r: &AnyRow) -> Result<BucketRow, sqlx::Error> {
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
        settings: r.try_get("settings")?,
        used_bytes: r.try_get("used_bytes")?,
        used_objects: r.try_get("used_objects")?,
        quota_bytes: r.try_get("quota_bytes")?,
        quota_objects: r.try_get("quota_objects")?,
    })
}

pub(crate) fn row_to_object(r: &AnyRow) -> Result<ObjectRow, sqlx::Error> {
    Ok(ObjectRow {
        version_id: r.try_get("version_id")?,
        bucket_id: r.try_get("bucket_id")?,
        key: r.try_get("object_key")?,
        size: r.try_get("size")?,
        etag: r.try_get("etag")?,
        data_key_id: r.try_get("data_key_id")?,
        sealed_meta: r.try_get("sealed_meta")?,
        created_at: r.try_get("created_at")?,
        part_count: r.try_get("part_count")?,
        inline_body: r.try_get("inline_body")?,
    })
}

fn row_to_upload(r: &AnyRow) -> Result<UploadRow, sqlx::Error> {
    Ok(UploadRow {
        upload_id: r.try_get("upload_id")?,
        bucket_id: r.try_get("bucket_id")?,
        key: r.try_get("object_key")?,
        version_id: r.try_get("version_id")?,
        data_key_id: r.try_get("data_key_id")?,
        sealed_meta: r.try_get("sealed_meta")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(crate) fn row_to_part(r: &AnyRow) -> Result<PartRow, sqlx::Error> {
    Ok(PartRow {
        part_id: r.try_get("part_id")?,
        upload_id: r.try_get("upload_id")?,
        part_number: r.try_get("part_number")?,
        size: r.try_get("size")?,
        etag: r.try_get("etag")?,
        data_key_id: r.try_get("data_key_id")?,
        version_id: r.try_get("version_id")?,
        created_at: r.try_get("created_at")?,
        checksum: r.try_get("checksum")?,
    })
}

/// Counts `bytes` and `objects` (negative to release) against a bucket's
/// usage, inside the caller's transaction.
pub(crate) async fn account(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
    bytes: i64,
    objects: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE buckets SET used_bytes = used_bytes + $1, used_objects = used_objects + $2 \
         WHERE id = $3",
    )
    .bind(bytes)
    .bind(objects)
    .bind(bucket_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// After a write in the caller's transaction: the quota the bucket or its
/// project now exceeds, if any (the caller rolls back).
pub(crate) async fn over_quota(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
) -> Result<Option<ApiError>, sqlx::Error> {
    let Some(r) = sqlx::query(
        "SELECT b.used_bytes, b.used_objects, b.quota_bytes, b.quota_objects, \
           p.storage_quota_bytes, p.storage_quota_objects, \
           CAST((SELECT COALESCE(SUM(x.used_bytes), 0) FROM buckets x \
                 WHERE x.project_id = b.project_id) AS BIGINT) AS project_bytes, \
           CAST((SELECT COALESCE(SUM(x.used_objects), 0) FROM buckets x \
                 WHERE x.project_id = b.project_id) AS BIGINT) AS project_objects \
         FROM buckets b JOIN projects p ON p.id = b.project_id WHERE b.id = $1",
    )
    .bind(bucket_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let get = |c: &str| r.try_get::<i64, _>(c);
    let checks = [
        ("bucket", "bytes", get("used_bytes")?, get("quota_bytes")?),
        (
            "bucket",
            "objects",
            get("used_objects")?,
            get("quota_objects")?,
        ),
        (
            "project",
            "bytes",
            get("project_bytes")?,
            get("storage_quota_bytes")?,
        ),
        (
            "project",
            "objects",
            get("project_objects")?,
            get("storage_quota_objects")?,
        ),
    ];
    Ok(checks
        .into_iter()
        .find(|(_, _, used, quota)| *quota > 0 && used > quota)
        .map(|(scope, what, _, quota)| {
            ApiError::forbidden(format!(
                "this write would exceed the {scope}'s quota of {quota} {what}"
            ))
            .with_code("quota_exceeded")
        }))
}

/// Removes the current version of a key (and the rows of its parts) inside
/// the caller's transaction, returning what was removed.
pub(crate) async fn take_current(
    conn: &mut sqlx::AnyConnection,
    bucket_id: &str,
    hex: &str,
) -> Result<Option<Replaced>, sqlx::Error> {
    let old = sqlx::query(&format!(
        "SELECT {OBJECT_COLS} FROM objects WHERE bucket_id = $1 AND key_hex = $2 \
         AND is_current = 1"
    ))
    .bind(bucket_id)
    .bind(hex)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| row_to_object(&r))
    .transpose()?;
    let Some(row) = old else {
        return Ok(None);
    };
    sqlx::query("DELETE FROM objects WHERE version_id = $1")
        .bind(&row.version_id)
        .execute(&mut *conn)
        .await?;
    account(conn, bucket_id, -row.size, -1).await?;
    let parts = if row.part_count > 0 {
        take_parts(conn, &row.version_id).await?
    } else {
        Vec::new()
    };
    Ok(Some(Replaced { row, parts }))
}

/// Removes the part rows of a version's body, returning them (their files
/// and data keys go after the commit).
pub(crate) async fn take_parts(
    conn: &mut sqlx::AnyConnection,
    version_id: &str,
) -> Result<Vec<PartRow>, sqlx::Error> {
    let parts = sqlx::query(&format!(
        "SELECT {PART_COLS} FROM multipart_parts WHERE version_id = $1 ORDER BY part_number"
    ))
    .bind(version_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(row_to_part)
    .collect::<Result<_, _>>()?;
    sqlx::query("DELETE FROM multipart_parts WHERE version_id = $1")
        .bind(version_id)
        .execute(&mut *conn)
        .await?;
    Ok(parts)
}

pub(crate) async fn insert_object(
    conn: &mut sqlx::AnyConnection,
    o: &ObjectRow,
    hex: &str,
) -> Result<(), sqlx::Error> {
    bind_object(
        sqlx::query(
            "INSERT INTO objects (version_id, bucket_id, object_key, key_hex, is_current, size, \
         etag, data_key_id, sealed_meta, created_at, part_count, inline_body) \
         VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10, $11)",
        ),
        o,
        hex,
    )
    .execute(&mut *conn)
    .await?;
    account(conn, &o.bucket_id, o.size, 1).await
}

/// Binds the columns of an `objects` row after `is_current`'s place:
/// version, bucket, key, key hex, then size to inline body.
fn bind_object<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    o: &'q ObjectRow,
    hex: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&o.version_id)
        .bind(&o.bucket_id)
        .bind(&o.key)
        .bind(hex)
        .bind(o.size)
        .bind(&o.etag)
        .bind(&o.data_key_id)
        .bind(&o.sealed_meta)
        .bind(o.created_at)
        .bind(o.part_count)
        .bind(&o.inline_body)
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
        sqlx::query(
            "INSERT INTO buckets (id, org_id, project_id, name, key_id, key_name, created_by, \
             generation, created_at, updated_at, settings) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
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
        .bind(&b.settings)
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

    /// The bucket named `name` with the name of its project (None when the
    /// project row is gone), in one read, or from the in-process cache that
    /// every S3 request reads: its usage counters may lag by up to
    /// [`crate::cache::CACHE_TTL`] (they are not read from it); any other
    /// change to the bucket through this process is seen at once.
    pub async fn bucket_get_with_project(
        &self,
        name: &str,
    ) -> ApiResult<Option<(BucketRow, Option<String>)>> {
        let epoch = self.buckets.epoch.get();
        if let Some(found) = self.buckets.rows.get(&name.to_string(), epoch) {
            return Ok(Some(found));
        }
        let found = self.bucket_read_with_project(name).await?;
        if let Some(found) = &found {
            self.buckets
                .rows
                .put(name.to_string(), epoch, found.clone());
        }
        Ok(found)
    }

    async fn bucket_read_with_project(
        &self,
        name: &str,
    ) -> ApiResult<Option<(BucketRow, Option<String>)>> {
        let row = sqlx::query(&format!(
            "SELECT {BUCKET_COLS}, (SELECT p.name FROM projects p \
             WHERE p.org_id = buckets.org_id AND p.id = buckets.project_id) AS project_name \
             FROM buckets WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            let b = row_to_bucket(&r)?;
            let project: Option<String> = r.try_get("project_name")?;
            Ok((b, project))
        })
        .transpose()
        .map_err(db_err)
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
        let pending =
            sqlx::query("SELECT upload_id FROM multipart_uploads WHERE bucket_id = $1 LIMIT 1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        if pending.is_some() {
            return Err(ApiError::conflict(
                "bucket_not_empty",
                "the bucket has multipart uploads in progress; abort them first",
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
        tx.commit().await.map_err(db_err)?;
        self.buckets.epoch.bump();
        Ok(())
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
    /// caller removes its body once this has committed) and the version id
    /// to report (see `versions`). Concurrent writers of one key: the last
    /// to commit wins.
    ///
    /// `cond` is judged against the current version inside the same
    /// transaction (a delete marker is no object): `precondition_failed`,
    /// or `not_found` for an ETag condition on a key without an object.
    ///
    /// `dek`, the data key of the version's body and metadata, is inserted in
    /// the same transaction. Concurrent calls are committed in groups (see
    /// `group_commit`).
    pub async fn object_put(
        &self,
        dek: Option<&DataKeyRow>,
        o: &ObjectRow,
        cond: &WriteIf,
    ) -> ApiResult<Placed> {
        self.commits.put(&self.write, dek, o, cond).await
    }

    /// How many object versions the group committer has written, and in
    /// how many transactions.
    pub fn object_commit_stats(&self) -> crate::CommitStats {
        self.commits.stats()
    }

    /// Replaces the sealed metadata of one version (tags change without a
    /// new version); false when the version is gone.
    pub async fn object_set_meta(&self, version_id: &str, sealed_meta: &str) -> ApiResult<bool> {
        let done = sqlx::query("UPDATE objects SET sealed_meta = $1 WHERE version_id = $2")
            .bind(sealed_meta)
            .bind(version_id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets a bucket's quota (0: none). Lowering it below the usage only
    /// refuses further writes.
    pub async fn bucket_set_quota(&self, id: &str, bytes: i64, objects: i64) -> ApiResult<()> {
        let done = sqlx::query(
            "UPDATE buckets SET quota_bytes = $1, quota_objects = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(bytes)
        .bind(objects)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        self.buckets.epoch.bump();
        if done.rows_affected() != 1 {
            return Err(ApiError::not_found("bucket", id));
        }
        Ok(())
    }

    /// A project's object storage: (used bytes, used objects, quota bytes,
    /// quota objects), usage summed over its buckets.
    pub async fn project_storage(&self, project_id: &str) -> ApiResult<(i64, i64, i64, i64)> {
        let r = sqlx::query(
            "SELECT p.storage_quota_bytes, p.storage_quota_objects, \
               CAST((SELECT COALESCE(SUM(b.used_bytes), 0) FROM buckets b \
                     WHERE b.project_id = p.id) AS BIGINT) AS used_bytes, \
               CAST((SELECT COALESCE(SUM(b.used_objects), 0) FROM buckets b \
                     WHERE b.project_id = p.id) AS BIGINT) AS used_objects \
             FROM projects p WHERE p.id = $1",
        )
        .bind(project_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("project", project_id))?;
        let get = |c: &str| r.try_get::<i64, _>(c).map_err(db_err);
        Ok((
            get("used_bytes")?,
            get("used_objects")?,
            get("storage_quota_bytes")?,
            get("storage_quota_objects")?,
        ))
    }

    /// Records the operator's object storage quota (0: none) for the
    /// project named `project_name` in `org_id`, whether or not it exists:
    /// it applies to the project holding the name now and to one created
    /// later under it (see migration 0017). Says nothing of the project.
    pub async fn project_set_storage_quota(
        &self,
        org_id: &str,
        project_name: &str,
        bytes: i64,
        objects: i64,
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        // The organization's row orders this with a project's creation,
        // which takes it first (the project count): one of the two sees
        // the other's write.
        let org = sqlx::query("UPDATE orgs SET project_count = project_count WHERE id = $1")
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if org.rows_affected() != 1 {
            return Err(ApiError::not_found("organization", org_id));
        }
        if bytes == 0 && objects == 0 {
            sqlx::query(
                "DELETE FROM project_storage_quotas WHERE org_id = $1 AND project_name = $2",
            )
            .bind(org_id)
            .bind(project_name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        } else {
            sqlx::query(
                "INSERT INTO project_storage_quotas \
                   (org_id, project_name, max_bytes, max_objects, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (org_id, project_name) DO UPDATE SET \
                   max_bytes = excluded.max_bytes, max_objects = excluded.max_objects, \
                   updated_at = excluded.updated_at",
            )
            .bind(org_id)
            .bind(project_name)
            .bind(bytes)
            .bind(objects)
            .bind(nuage_core::time::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        sqlx::query(
            "UPDATE projects SET storage_quota_bytes = $1, storage_quota_objects = $2 \
             WHERE org_id = $3 AND name = $4",
        )
        .bind(bytes)
        .bind(objects)
        .bind(org_id)
        .bind(project_name)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Replaces a bucket's settings document.
    ///
    /// Compare-and-swap: only over the document `read` (what the caller
    /// changed); false when another writer changed it meanwhile, so that
    /// concurrent changes of different settings never lose one another.
    pub async fn bucket_set_settings(
        &self,
        id: &str,
        read: &str,
        settings: &str,
    ) -> ApiResult<bool> {
        let done = sqlx::query(
            "UPDATE buckets SET settings = $1, updated_at = $2 WHERE id = $3 AND settings = $4",
        )
        .bind(settings)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .bind(read)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        self.buckets.epoch.bump();
        Ok(done.rows_affected() == 1)
    }

    /// Removes the current version of `key`, returning it.
    pub async fn object_delete(&self, bucket_id: &str, key: &str) -> ApiResult<Option<Replaced>> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let old = take_current(&mut tx, bucket_id, &key_hex(key))
            .await
            .map_err(db_err)?;
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
            "SELECT {OBJECT_LIST_COLS} FROM objects WHERE bucket_id = $1 AND is_current = 1 \
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

    /// Deletes the data keys of object versions and parts that never got
    /// their row (a crash between drawing the key and the commit), created
    /// before `before_ms`; returns how many went.
    pub async fn object_orphan_data_keys_delete(&self, before_ms: i64) -> ApiResult<u64> {
        let done = sqlx::query(
            "DELETE FROM kms_data_keys WHERE created_at < $1 AND ( \
               (substr(owner, 1, 4) = 'obv_' \
                 AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.version_id = kms_data_keys.owner) \
                 AND NOT EXISTS (SELECT 1 FROM multipart_uploads u \
                                 WHERE u.version_id = kms_data_keys.owner)) \
               OR (substr(owner, 1, 4) = 'obp_' \
                 AND NOT EXISTS (SELECT 1 FROM multipart_parts p \
                                 WHERE p.part_id = kms_data_keys.owner)))",
        )
        .bind(before_ms)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
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

    pub async fn upload_create(&self, u: &UploadRow) -> ApiResult<()> {
        let now = u.created_at;
        sqlx::query(
            "INSERT INTO multipart_uploads (upload_id, bucket_id, object_key, key_hex, version_id, \
             data_key_id, sealed_meta, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&u.upload_id)
        .bind(&u.bucket_id)
        .bind(&u.key)
        .bind(key_hex(&u.key))
        .bind(&u.version_id)
        .bind(&u.data_key_id)
        .bind(&u.sealed_meta)
        .bind(&u.created_by)
        .bind(now)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(insert_err("upload", &u.upload_id))?;
        Ok(())
    }

    /// An upload in progress of `key` in a bucket.
    pub async fn upload_get(
        &self,
        bucket_id: &str,
        key: &str,
        upload_id: &str,
    ) -> ApiResult<Option<UploadRow>> {
        let row = sqlx::query(&format!(
            "SELECT {UPLOAD_COLS} FROM multipart_uploads WHERE upload_id = $1 AND bucket_id = $2 \
             AND key_hex = $3"
        ))
        .bind(upload_id)
        .bind(bucket_id)
        .bind(key_hex(key))
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_upload(&r)).transpose().map_err(db_err)
    }

    /// Uploads in progress under `prefix_hex`, by key then upload id, after
    /// the cursor: keys after `after_hex`, and with `after_upload` also the
    /// uploads of that very key with a greater id; at most `limit`.
    pub async fn upload_list(
        &self,
        bucket_id: &str,
        prefix_hex: &str,
        after_hex: &str,
        after_upload: Option<&str>,
        limit: i64,
    ) -> ApiResult<Vec<UploadRow>> {
        // No key is empty: comparing with "" disables the same-key branch.
        let same_key = if after_upload.is_some() {
            after_hex
        } else {
            ""
        };
        let upper = format!("{prefix_hex}g");
        let rows = sqlx::query(&format!(
            "SELECT {UPLOAD_COLS} FROM multipart_uploads WHERE bucket_id = $1 \
             AND key_hex >= $2 AND key_hex < $3 \
             AND (key_hex > $4 OR (key_hex = $5 AND upload_id > $6)) \
             ORDER BY key_hex, upload_id LIMIT $7"
        ))
        .bind(bucket_id)
        .bind(prefix_hex)
        .bind(&upper)
        .bind(after_hex)
        .bind(same_key)
        .bind(after_upload.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_upload)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Records a part of an upload in progress, replacing an earlier part
    /// of the same number (returned, for its file to go). An upload that
    /// is gone (completed or aborted meanwhile) is `not_found`.
    pub async fn part_put(&self, p: &PartRow) -> ApiResult<Option<PartRow>> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        // Touching the upload row serializes with Complete and Abort, which
        // delete it first.
        let live = sqlx::query("UPDATE multipart_uploads SET updated_at = $1 WHERE upload_id = $2")
            .bind(p.created_at)
            .bind(&p.upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if live.rows_affected() != 1 {
            return Err(ApiError::not_found("upload", &p.upload_id));
        }
        let old = sqlx::query(&format!(
            "SELECT {PART_COLS} FROM multipart_parts WHERE upload_id = $1 AND part_number = $2"
        ))
        .bind(&p.upload_id)
        .bind(p.part_number)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .map(|r| row_to_part(&r))
        .transpose()
        .map_err(db_err)?;
        if let Some(old) = &old {
            sqlx::query("DELETE FROM multipart_parts WHERE part_id = $1")
                .bind(&old.part_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(&format!(
            "INSERT INTO multipart_parts ({PART_COLS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)"
        ))
        .bind(&p.part_id)
        .bind(&p.upload_id)
        .bind(p.part_number)
        .bind(p.size)
        .bind(&p.etag)
        .bind(&p.data_key_id)
        .bind(p.created_at)
        .bind(&p.checksum)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(old)
    }

    /// Parts of an upload in progress numbered above `after`, in order.
    pub async fn upload_parts(
        &self,
        upload_id: &str,
        after: i64,
        limit: i64,
    ) -> ApiResult<Vec<PartRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PART_COLS} FROM multipart_parts WHERE upload_id = $1 \
             AND version_id IS NULL AND part_number > $2 ORDER BY part_number LIMIT $3"
        ))
        .bind(upload_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_part)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// The parts making up a completed version's body, in order.
    pub async fn version_parts(&self, version_id: &str) -> ApiResult<Vec<PartRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PART_COLS} FROM multipart_parts WHERE version_id = $1 ORDER BY part_number"
        ))
        .bind(version_id)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_part)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Ends an upload without an object: its row and its parts' rows go
    /// (returned, for the caller to remove files and keys); None when
    /// there was no such upload.
    pub async fn upload_abort(
        &self,
        bucket_id: &str,
        upload_id: &str,
    ) -> ApiResult<Option<(UploadRow, Vec<PartRow>)>> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let Some(up) = sqlx::query(&format!(
            "SELECT {UPLOAD_COLS} FROM multipart_uploads WHERE upload_id = $1 AND bucket_id = $2"
        ))
        .bind(upload_id)
        .bind(bucket_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .map(|r| row_to_upload(&r))
        .transpose()
        .map_err(db_err)?
        else {
            return Ok(None);
        };
        let gone = sqlx::query("DELETE FROM multipart_uploads WHERE upload_id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if gone.rows_affected() != 1 {
            return Ok(None);
        }
        let parts = sqlx::query(&format!(
            "SELECT {PART_COLS} FROM multipart_parts WHERE upload_id = $1 AND version_id IS NULL"
        ))
        .bind(upload_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(row_to_part)
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
        sqlx::query("DELETE FROM multipart_parts WHERE upload_id = $1 AND version_id IS NULL")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some((up, parts)))
    }

    /// Completes an upload in one transaction: `o` (the upload's reserved
    /// version) becomes current, built from the parts `chosen` (part ids,
    /// in order, as validated by the caller); the upload row goes. A part
    /// replaced since the caller read it is a `part_changed` conflict; an
    /// upload already gone is `not_found`.
    pub async fn upload_complete(
        &self,
        upload_id: &str,
        o: &ObjectRow,
        chosen: &[String],
    ) -> ApiResult<Completed> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.upload_complete_once(upload_id, o, chosen).await {
                Err(Err(e)) if is_unique_violation(&e) && tries < 5 => continue,
                Err(Err(e)) => return Err(db_err(e)),
                Err(Ok(e)) => return Err(e),
                Ok(c) => return Ok(c),
            }
        }
    }

    async fn upload_complete_once(
        &self,
        upload_id: &str,
        o: &ObjectRow,
        chosen: &[String],
    ) -> Result<Completed, Result<ApiError, sqlx::Error>> {
        let hex = key_hex(&o.key);
        let mut tx = self.write.begin().await.map_err(Err)?;
        // Deleting the upload row first takes the lock UploadPart takes.
        let gone = sqlx::query(
            "DELETE FROM multipart_uploads WHERE upload_id = $1 AND bucket_id = $2 AND key_hex = $3",
        )
        .bind(upload_id)
        .bind(&o.bucket_id)
        .bind(&hex)
        .execute(&mut *tx)
        .await
        .map_err(Err)?;
        if gone.rows_affected() != 1 {
            return Err(Ok(ApiError::not_found("upload", upload_id)));
        }
        let parts: Vec<PartRow> = sqlx::query(&format!(
            "SELECT {PART_COLS} FROM multipart_parts WHERE upload_id = $1 AND version_id IS NULL"
        ))
        .bind(upload_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(Err)?
        .iter()
        .map(row_to_part)
        .collect::<Result<_, _>>()
        .map_err(Err)?;
        let wanted: std::collections::HashSet<&str> = chosen.iter().map(String::as_str).collect();
        let present = parts
            .iter()
            .filter(|p| wanted.contains(p.part_id.as_str()))
            .count();
        if present != wanted.len() || wanted.len() != chosen.len() {
            return Err(Ok(ApiError::conflict(
                "part_changed",
                "a part was uploaded again while the upload was being completed",
            )));
        }
        for id in chosen {
            sqlx::query("UPDATE multipart_parts SET version_id = $1 WHERE part_id = $2")
                .bind(&o.version_id)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(Err)?;
        }
        let unused: Vec<PartRow> = parts
            .into_iter()
            .filter(|p| !wanted.contains(p.part_id.as_str()))
            .collect();
        for p in &unused {
            sqlx::query("DELETE FROM multipart_parts WHERE part_id = $1")
                .bind(&p.part_id)
                .execute(&mut *tx)
                .await
                .map_err(Err)?;
        }
        let placed = place_version(&mut tx, o, &hex).await.map_err(Err)?;
        if let Some(e) = over_quota(&mut tx, &o.bucket_id).await.map_err(Err)? {
            return Err(Ok(e));
        }
        tx.commit().await.map_err(Err)?;
        Ok(Completed {
            replaced: placed.replaced,
            unused,
            version_id: placed.version_id,
        })
    }

    /// Whether a part row exists: part files without one are leftovers.
    pub async fn part_exists(&self, part_id: &str) -> ApiResult<bool> {
        let row = sqlx::query("SELECT part_id FROM multipart_parts WHERE part_id = $1")
            .bind(part_id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }
}

/// The body of [`Store::object_put`] on the caller's transaction: the
/// outer `Err` is a database failure, the inner one a refusal (condition,
/// quota) after which the caller rolls back.
pub(crate) async fn put_on(
    conn: &mut sqlx::AnyConnection,
    dek: Option<&DataKeyRow>,
    o: &ObjectRow,
    cond: &WriteIf,
    terms: Option<BucketTerms>,
) -> Result<ApiResult<Placed>, sqlx::Error> {
    let hex = key_hex(&o.key);
    if *cond != WriteIf::Always {
        let etag: Option<String> = sqlx::query_scalar(
            "SELECT etag FROM objects WHERE bucket_id = $1 AND key_hex = $2 AND is_current = 1",
        )
        .bind(&o.bucket_id)
        .bind(&hex)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(e) = cond.refusal(&o.key, etag.as_deref()) {
            return Ok(Err(e));
        }
    }
    if let Some(d) = dek {
        insert_data_key(conn, d).await?;
    }
    let placed = match terms {
        Some(t) => place_version_as(conn, o, &hex, t.mode).await?,
        None => place_version(conn, o, &hex).await?,
    };
    if terms.is_none_or(|t| t.quotas) {
        if let Some(e) = over_quota(conn, &o.bucket_id).await? {
            return Ok(Err(e));
        }
    }
    Ok(Ok(placed))
}

/// One PUT of a group for [`put_batch_on`].
pub(crate) struct BatchPut<'a> {
    pub dek: Option<&'a DataKeyRow>,
    pub row: &'a ObjectRow,
    pub cond: &'a WriteIf,
}

/// Rows per multi-row statement of [`put_batch_on`]: 32 object rows bind
/// 352 parameters, far below SQLite's and PostgreSQL's limits.
const BATCH_ROWS: usize = 32;

/// The `VALUES` list of `rows` rows of `width` parameters (`$1`, `$2`, …
/// in order), each row's text made by `row` from its parameters.
fn numbered_rows(rows: usize, width: usize, row: impl Fn(&[String]) -> String) -> String {
    (0..rows)
        .map(|r| {
            let params: Vec<String> = (0..width)
                .map(|c| format!("${}", 1 + r * width + c))
                .collect();
            row(&params)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`put_on`] for a whole group of PUTs into unversioned buckets without
/// quotas, each to a different key, in a handful of multi-row statements
/// instead of four statements per PUT: every statement is a round trip to
/// the write connection's thread (SQLite) or to the server (PostgreSQL),
/// and the group's commit waits for all of them. The caller checks those
/// conditions (in-group duplicates would need the PUTs applied in order).
pub(crate) async fn put_batch_on(
    conn: &mut sqlx::AnyConnection,
    puts: &[BatchPut<'_>],
) -> Result<Vec<ApiResult<Placed>>, sqlx::Error> {
    use std::collections::HashMap;
    let hexes: Vec<String> = puts.iter().map(|p| key_hex(&p.row.key)).collect();

    // The current version of every key, by (bucket, key).
    let mut by_bucket: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in puts.iter().enumerate() {
        by_bucket
            .entry(p.row.bucket_id.as_str())
            .or_default()
            .push(i);
    }
    let mut current: HashMap<(&str, &str), ObjectRow> = HashMap::new();
    for (bucket, members) in &by_bucket {
        for chunk in members.chunks(BATCH_ROWS) {
            let list: Vec<String> = (0..chunk.len()).map(|n| format!("${}", n + 2)).collect();
            let sql = format!(
                "SELECT {OBJECT_COLS} FROM objects WHERE bucket_id = $1 AND is_current = 1 \
                 AND key_hex IN ({})",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(*bucket);
            for &i in chunk {
                q = q.bind(hexes[i].as_str());
            }
            for r in q.fetch_all(&mut *conn).await? {
                let row = row_to_object(&r)?;
                if let Some(&i) = chunk.iter().find(|&&i| puts[i].row.key == row.key) {
                    current.insert((bucket, puts[i].row.key.as_str()), row);
                }
            }
        }
    }

    // Conditions, from the rows just read (no key repeats in the group).
    let mut out: Vec<Option<ApiResult<Placed>>> = (0..puts.len()).map(|_| None).collect();
    for (i, p) in puts.iter().enumerate() {
        let have = current.get(&(p.row.bucket_id.as_str(), p.row.key.as_str()));
        if let Some(e) = p.cond.refusal(&p.row.key, have.map(|h| h.etag.as_str())) {
            out[i] = Some(Err(e));
        }
    }
    let going: Vec<usize> = (0..puts.len()).filter(|&i| out[i].is_none()).collect();

    // The versions that lose their place, with their parts.
    let mut replaced: HashMap<usize, Replaced> = HashMap::new();
    let mut delta: HashMap<&str, (i64, i64)> = HashMap::new();
    for &i in &going {
        let p = &puts[i];
        let d = delta.entry(p.row.bucket_id.as_str()).or_default();
        d.0 += p.row.size;
        d.1 += 1;
        if let Some(old) = current.remove(&(p.row.bucket_id.as_str(), p.row.key.as_str())) {
            d.0 -= old.size;
            d.1 -= 1;
            replaced.insert(
                i,
                Replaced {
                    row: old,
                    parts: Vec::new(),
                },
            );
        }
    }
    let gone: Vec<&str> = replaced
        .values()
        .map(|r| r.row.version_id.as_str())
        .collect();
    for chunk in gone.chunks(BATCH_ROWS) {
        let list: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "DELETE FROM objects WHERE version_id IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for v in chunk {
            q = q.bind(*v);
        }
        q.execute(&mut *conn).await?;
    }
    for r in replaced.values_mut().filter(|r| r.row.part_count > 0) {
        r.parts = take_parts(conn, &r.row.version_id).await?;
    }

    // The new data keys and versions.
    let deks: Vec<&DataKeyRow> = going.iter().filter_map(|&i| puts[i].dek).collect();
    for chunk in deks.chunks(BATCH_ROWS) {
        let sql = format!(
            "INSERT INTO kms_data_keys ({}) VALUES {}",
            crate::kms::DEK_COLS,
            numbered_rows(chunk.len(), 6, |p| format!("({})", p.join(", ")))
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = q
                .bind(&d.id)
                .bind(&d.key_id)
                .bind(d.key_version)
                .bind(&d.owner)
                .bind(&d.wrapped)
                .bind(d.created_at);
        }
        q.execute(&mut *conn).await?;
    }
    for chunk in going.chunks(BATCH_ROWS) {
        let sql = format!(
            "INSERT INTO objects (version_id, bucket_id, object_key, key_hex, is_current, size, \
             etag, data_key_id, sealed_meta, created_at, part_count, inline_body) VALUES {}",
            numbered_rows(chunk.len(), 11, |p| format!(
                "({}, 1, {})",
                p[..4].join(", "),
                p[4..].join(", ")
            ))
        );
        let mut q = sqlx::query(&sql);
        for &i in chunk {
            q = bind_object(q, puts[i].row, &hexes[i]);
        }
        q.execute(&mut *conn).await?;
    }
    for (bucket, (bytes, objects)) in delta {
        account(conn, bucket, bytes, objects).await?;
    }

    for i in going {
        out[i] = Some(Ok(Placed {
            replaced: replaced.remove(&i),
            version_id: None,
        }));
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("a PUT of the group was not placed"))))
        .collect())
}
