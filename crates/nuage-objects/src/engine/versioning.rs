//! Versions through the engine: reads of a given version, deletes that
//! add delete markers or remove one version for good, and the listing of
//! all versions. The store decides placement from the bucket's versioning
//! state (see `nuage_store::versions`); here bodies and data keys of what
//! it removed are discarded once its transaction has committed, so a
//! removed version is crypto-shredded exactly like a replaced one.

use nuage_core::time::now_ms;
use nuage_core::ApiResult;
use nuage_kms::{KeyUse, Purpose};
use nuage_store::{BucketRow, Deleted, VersionRow, NULL_VERSION};

use super::{Engine, Opened};

/// Whether `id` can name a version: "null" or one of ours (`obv_` and 32
/// hex digits). Anything else is a client error, not a missing version.
pub fn valid_version_id(id: &str) -> bool {
    id == NULL_VERSION
        || id.strip_prefix("obv_").is_some_and(|h| {
            h.len() == 32
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// What a read of a key or of one version found.
pub enum Found {
    Object(Box<Opened>, KeyUse, VersionRow),
    /// The latest version (or the one asked for) is a delete marker.
    Marker(VersionRow),
    Missing,
}

/// One page of ListObjectVersions.
#[derive(Debug, Default)]
pub struct VersionListing {
    pub versions: Vec<VersionRow>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    pub next_key: Option<String>,
    pub next_version: Option<String>,
}

fn new_version_id() -> String {
    format!("obv_{}", uuid::Uuid::now_v7().simple())
}

impl Engine {
    /// The latest version of `key`, or the version `version_id` of it.
    pub async fn open_version(
        &self,
        bucket: &BucketRow,
        key: &str,
        version_id: Option<&str>,
        why: &Purpose,
    ) -> ApiResult<Found> {
        let found = match version_id {
            Some(v) => self.store.version_get(&bucket.id, key, v).await?,
            None => self.store.version_latest(&bucket.id, key).await?,
        };
        match found {
            None => Ok(Found::Missing),
            Some(v) if v.marker => Ok(Found::Marker(v)),
            Some(v) => {
                let (o, used) = self.open_row(bucket, v.row.clone(), why).await?;
                Ok(Found::Object(Box::new(o), used, v))
            }
        }
    }

    /// DELETE without a version id: a delete marker in a versioned bucket,
    /// the object itself in a never-versioned one.
    pub async fn delete_latest(&self, bucket: &BucketRow, key: &str) -> ApiResult<Deleted> {
        self.delete_latest_if(bucket, key, None, now_ms()).await
    }

    /// [`Engine::delete_latest`] at time `now`, only while `current` (when
    /// given) is still the current object.
    pub async fn delete_latest_if(
        &self,
        bucket: &BucketRow,
        key: &str,
        current: Option<&str>,
        now: i64,
    ) -> ApiResult<Deleted> {
        let d = self
            .store
            .object_delete_latest(&bucket.id, key, &new_version_id(), now, current)
            .await?;
        if let Some(old) = &d.removed {
            self.discard(old).await;
        }
        Ok(d)
    }

    /// Removes one version for good, with its body and data key. None when
    /// there was no such version (or a guard kept it, see
    /// `Store::object_delete_version`).
    pub async fn delete_version(
        &self,
        bucket: &BucketRow,
        key: &str,
        version_id: &str,
        noncurrent_only: bool,
        alone_only: bool,
    ) -> ApiResult<Option<VersionRow>> {
        let Some(gone) = self
            .store
            .object_delete_version(&bucket.id, key, version_id, noncurrent_only, alone_only)
            .await?
        else {
            return Ok(None);
        };
        if let Some(body) = gone.body() {
            self.discard(&body).await;
        }
        Ok(Some(gone.version))
    }

    /// One page of versions under `prefix`, after (`key_marker`,
    /// `version_marker`), keys sharing the part up to the next `delimiter`
    /// rolled into one common prefix.
    pub async fn list_versions(
        &self,
        bucket: &BucketRow,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        version_marker: Option<&str>,
        max: usize,
    ) -> ApiResult<VersionListing> {
        if max == 0 {
            return Ok(VersionListing::default());
        }
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let prefix_hex = nuage_store::key_hex(prefix);
        let (mut after_hex, mut after_seq) = (String::new(), None);
        if let Some(k) = key_marker {
            after_hex = nuage_store::key_hex(k);
            match version_marker {
                Some(v) => {
                    // A version gone since the previous page: go on after its key.
                    after_seq = self
                        .store
                        .version_get(&bucket.id, k, v)
                        .await?
                        .map(|r| r.seq);
                }
                // A key marker that is a common prefix skips everything under it.
                None if delimiter.is_some_and(|d| k.ends_with(d)) => after_hex.push('g'),
                None => {}
            }
        }
        let mut l = VersionListing::default();
        let mut count = 0usize;
        let mut rolled: Option<String> = None;
        loop {
            let want = (max - count + 1).clamp(2, 1001);
            let rows = self
                .store
                .version_list(
                    &bucket.id,
                    &prefix_hex,
                    &after_hex,
                    after_seq,
                    i64::try_from(want).unwrap_or(1001),
                )
                .await?;
            let n = rows.len();
            for r in rows {
                if rolled
                    .as_deref()
                    .is_some_and(|cp| r.row.key.starts_with(cp))
                {
                    continue;
                }
                if count == max {
                    l.truncated = true;
                    return Ok(l);
                }
                let common = delimiter.and_then(|d| {
                    r.row
                        .key
                        .get(prefix.len()..)
                        .and_then(|rest| rest.find(d))
                        .map(|i| r.row.key[..prefix.len() + i + d.len()].to_string())
                });
                match common {
                    Some(cp) => {
                        after_hex = format!("{}g", nuage_store::key_hex(&cp));
                        after_seq = None;
                        l.next_key = Some(cp.clone());
                        l.next_version = None;
                        l.prefixes.push(cp.clone());
                        rolled = Some(cp);
                    }
                    None => {
                        after_hex = nuage_store::key_hex(&r.row.key);
                        after_seq = Some(r.seq);
                        l.next_key = Some(r.row.key.clone());
                        l.next_version = Some(r.label().to_string());
                        l.versions.push(r);
                    }
                }
                count += 1;
            }
            if n < want {
                return Ok(l);
            }
        }
    }
}
