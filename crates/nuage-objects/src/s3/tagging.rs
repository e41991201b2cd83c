//! Object and bucket tagging. Object tags live in the version's sealed
//! metadata (changing them makes no new version); bucket tags in the
//! bucket's settings, sealed too. Limits are S3's: ten tags per object,
//! fifty per bucket, keys up to 128 characters, values up to 256.

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::ops::{read_action, s3_err, Call, Objects};
use crate::settings::BucketSettings;

const MAX_OBJECT_TAGS: usize = 10;
const MAX_BUCKET_TAGS: usize = 50;

fn check(tags: &BTreeMap<String, String>, count: usize, max: usize) -> S3Result<()> {
    if count != tags.len() {
        return Err(s3_error!(
            InvalidTag,
            "Cannot provide multiple Tags with the same key"
        ));
    }
    if tags.len() > max {
        return Err(s3_error!(
            InvalidTag,
            "Object tags cannot be greater than {max}"
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(s3_error!(
                InvalidTag,
                "The TagKey you have provided is invalid"
            ));
        }
        if v.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "The TagValue you have provided is invalid"
            ));
        }
        if k.starts_with("aws:") {
            return Err(s3_error!(
                InvalidTag,
                "Your TagKey cannot be prefixed with aws:"
            ));
        }
    }
    Ok(())
}

/// The `x-amz-tagging` header of a PUT: a URL-encoded query string.
pub(super) fn parse_header(h: &str) -> S3Result<BTreeMap<String, String>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(h)
        .map_err(|_| s3_error!(InvalidArgument, "the x-amz-tagging header does not parse"))?;
    let n = pairs.len();
    let tags: BTreeMap<_, _> = pairs.into_iter().collect();
    check(&tags, n, MAX_OBJECT_TAGS)?;
    Ok(tags)
}

fn from_set(set: TagSet, max: usize) -> S3Result<BTreeMap<String, String>> {
    let n = set.len();
    let tags: BTreeMap<_, _> = set
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
        .collect();
    check(&tags, n, max)?;
    Ok(tags)
}

fn to_set(tags: BTreeMap<String, String>) -> TagSet {
    tags.into_iter()
        .map(|(k, v)| Tag {
            key: Some(k),
            value: Some(v),
        })
        .collect()
}

impl Objects {
    pub(super) async fn get_object_tagging_inner(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let action = read_action(input.version_id.is_some());
        let b = self.bucket(&call, action, &input.bucket).await?;
        call.note(action, format!("bucket:{}/{}", b.name, input.key));
        let (o, used, version) = self
            .open_for_read(&call, &b, &input.key, input.version_id.as_deref())
            .await?;
        call.record_use(&used);
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: to_set(o.meta.tags),
            version_id: version,
        }))
    }

    pub(super) async fn put_object_tagging_inner(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        let tags = from_set(input.tagging.tag_set, MAX_OBJECT_TAGS)?;
        let version = self
            .set_object_tags(&call, &b, &input.key, input.version_id.as_deref(), tags)
            .await?;
        Ok(S3Response::new(PutObjectTaggingOutput {
            version_id: version,
        }))
    }

    pub(super) async fn delete_object_tagging_inner(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        let version = self
            .set_object_tags(
                &call,
                &b,
                &input.key,
                input.version_id.as_deref(),
                BTreeMap::new(),
            )
            .await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput {
            version_id: version,
        }))
    }

    /// Replaces the tags of the current version of `key`, or of the
    /// version named; returns the version id to report.
    async fn set_object_tags(
        &self,
        call: &Call,
        b: &nuage_store::BucketRow,
        key: &str,
        version_id: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> S3Result<Option<String>> {
        let (o, used, version) = self.open_for_read(call, b, key, version_id).await?;
        call.record_use(&used);
        let changed = self
            .engine
            .update_meta(b, o, |m| m.tags = tags)
            .await
            .map_err(s3_err)?;
        if !changed {
            return Err(s3_error!(NoSuchKey));
        }
        Ok(version)
    }

    pub(super) async fn get_bucket_tagging_inner(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.get_bucket", &req.input.bucket)
            .await?;
        let tags = BucketSettings::of(&b)
            .and_then(|s| s.tags(self.engine.kms(), &b.id))
            .map_err(s3_err)?;
        if tags.is_empty() {
            return Err(s3_error!(NoSuchTagSet, "The TagSet does not exist"));
        }
        Ok(S3Response::new(GetBucketTaggingOutput {
            tag_set: to_set(tags),
        }))
    }

    pub(super) async fn put_bucket_tagging_inner(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self
            .bucket(&call, "s3.put_bucket_settings", &input.bucket)
            .await?;
        let tags = from_set(input.tagging.tag_set, MAX_BUCKET_TAGS)?;
        self.update_settings(&b, |s, kms| s.set_tags(kms, &b.id, &tags))
            .await?;
        Ok(S3Response::new(PutBucketTaggingOutput {}))
    }

    pub(super) async fn delete_bucket_tagging_inner(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.put_bucket_settings", &req.input.bucket)
            .await?;
        self.update_settings(&b, |s, kms| s.set_tags(kms, &b.id, &BTreeMap::new()))
            .await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput {}))
    }

    /// Rewrites a bucket's settings document through `f`, again over the
    /// newer document when another writer changed it meanwhile.
    pub(super) async fn update_settings(
        &self,
        b: &nuage_store::BucketRow,
        f: impl Fn(&mut BucketSettings, &nuage_kms::Kms) -> nuage_core::ApiResult<()>,
    ) -> S3Result<()> {
        let store = self.engine.store();
        let mut read = b.settings.clone();
        for _ in 0..10 {
            let mut s = serde_json::from_str::<BucketSettings>(&read)
                .map_err(|e| s3_err(nuage_core::ApiError::internal(e.to_string())))?;
            f(&mut s, self.engine.kms()).map_err(s3_err)?;
            let json = s.to_json().map_err(s3_err)?;
            if store
                .bucket_set_settings(&b.id, &read, &json)
                .await
                .map_err(s3_err)?
            {
                return Ok(());
            }
            read = store
                .bucket_get(&b.name)
                .await
                .map_err(s3_err)?
                .filter(|now| now.id == b.id)
                .ok_or_else(|| s3_error!(NoSuchBucket))?
                .settings;
        }
        Err(s3_error!(
            OperationAborted,
            "the bucket's settings kept changing; retry"
        ))
    }
}
