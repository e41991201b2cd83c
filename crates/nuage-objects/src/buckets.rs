//! Bucket lifecycle, shared by the REST API and the S3 endpoint so both
//! apply the same name rules, key choice and emptiness check.

use nuage_core::id::{new_id, Kind};
use nuage_core::model::Project;
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::Kms;
use nuage_store::{BucketRow, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::check_bucket_name;

pub use nuage_kms::DEFAULT_KEY;

/// A bucket as the REST API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Bucket {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    /// The project key whose data keys encrypt the bucket's objects.
    pub key: String,
    pub key_id: String,
    pub created_by: String,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// What the bucket holds (every version and delete marker).
    pub usage: StorageUsage,
    pub quota: StorageQuota,
}

/// Bytes and objects stored.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StorageUsage {
    pub bytes: i64,
    pub objects: i64,
}

/// Limits on what may be stored; absent means none.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StorageQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_objects: Option<i64>,
}

impl StorageQuota {
    /// From stored values (0: none).
    pub fn from_stored(bytes: i64, objects: i64) -> Self {
        StorageQuota {
            max_bytes: (bytes > 0).then_some(bytes),
            max_objects: (objects > 0).then_some(objects),
        }
    }

    /// The stored form, refusing values that are not positive.
    pub fn to_stored(self) -> ApiResult<(i64, i64)> {
        for v in [self.max_bytes, self.max_objects].into_iter().flatten() {
            if v <= 0 {
                return Err(ApiError::bad_request(
                    "invalid_quota",
                    "a quota is a positive number (leave it out for none)",
                ));
            }
        }
        Ok((self.max_bytes.unwrap_or(0), self.max_objects.unwrap_or(0)))
    }
}

impl From<&BucketRow> for Bucket {
    fn from(b: &BucketRow) -> Self {
        Bucket {
            id: b.id.clone(),
            name: b.name.clone(),
            org_id: b.org_id.clone(),
            project_id: b.project_id.clone(),
            key: b.key_name.clone(),
            key_id: b.key_id.clone(),
            created_by: b.created_by.clone(),
            created_at: b.created_at,
            usage: StorageUsage {
                bytes: b.used_bytes,
                objects: b.used_objects,
            },
            quota: StorageQuota::from_stored(b.quota_bytes, b.quota_objects),
        }
    }
}

/// Creates bucket `name` in `project`, encrypted under the project key
/// [`DEFAULT_KEY`] (created if the project has none yet).
pub async fn create(
    store: &Store,
    kms: &Kms,
    project: &Project,
    name: &str,
    created_by: &str,
) -> ApiResult<BucketRow> {
    check_bucket_name(name)
        .map_err(|e| ApiError::invalid_name(e).with_code("invalid_bucket_name"))?;
    let key = kms.default_key(project).await?;
    let now = now_ms();
    let row = BucketRow {
        id: new_id(Kind::Project).replacen("prj_", "bkt_", 1),
        org_id: project.org_id.clone(),
        project_id: project.id.clone(),
        name: name.to_string(),
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        created_by: created_by.to_string(),
        generation: 1,
        created_at: now,
        updated_at: now,
        settings: "{}".into(),
        used_bytes: 0,
        used_objects: 0,
        quota_bytes: 0,
        quota_objects: 0,
    };
    store.bucket_create(&row).await?;
    Ok(row)
}

/// A bucket of the organization, or `None` — also for another
/// organization's bucket, whose existence is never confirmed.
pub async fn get_in_org(store: &Store, org_id: &str, name: &str) -> ApiResult<Option<BucketRow>> {
    Ok(store.bucket_get(name).await?.filter(|b| b.org_id == org_id))
}
