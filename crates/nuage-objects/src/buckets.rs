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

/// The project key that encrypts new buckets, created on first use.
pub const DEFAULT_KEY: &str = "default";

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
    let key = match store.kms_key_get(&project.id, DEFAULT_KEY).await? {
        Some(k) => k,
        None => match kms
            .key_create(
                &project.org_id,
                &project.id,
                DEFAULT_KEY,
                "objects and volumes",
                None,
                &None,
            )
            .await
        {
            Ok(k) => k,
            // Another request created it first.
            Err(e) if e.code == "already_exists" => store
                .kms_key_get(&project.id, DEFAULT_KEY)
                .await?
                .ok_or_else(|| ApiError::internal("the default key vanished"))?,
            Err(e) => return Err(e),
        },
    };
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
    };
    store.bucket_create(&row).await?;
    Ok(row)
}

/// A bucket of the organization, or `None` — also for another
/// organization's bucket, whose existence is never confirmed.
pub async fn get_in_org(store: &Store, org_id: &str, name: &str) -> ApiResult<Option<BucketRow>> {
    Ok(store.bucket_get(name).await?.filter(|b| b.org_id == org_id))
}
