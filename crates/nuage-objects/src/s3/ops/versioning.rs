//! Versioning operations: the bucket's versioning state, reads and deletes
//! of one version, delete markers and ListObjectVersions, with AWS's
//! answers (NoSuchKey plus `x-amz-delete-marker` for a key whose latest
//! version is a marker, 405 MethodNotAllowed for a GET of a marker).
//!
//! Actions: reading or changing the state is `s3.get_bucket_versioning` /
//! `s3.put_bucket_versioning` (bucket-admin); listing versions,
//! `s3.list_bucket_versions`; a read naming a version,
//! `s3.get_object_version`; removing a version for good,
//! `s3.delete_object_version` — bucket-admin only, because versioning is
//! what protects data from a writer's mistakes (or a stolen writer key).

use http::{HeaderMap, HeaderValue};
use nuage_kms::KeyUse;
use nuage_store::{BucketRow, VersionRow, Versioning};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{enc, is_url, s3_err, timestamp, url_encode, Call, Objects};
use crate::engine::{valid_version_id, Found, Opened};

/// The action of a read: naming a version needs its own permission.
pub(in crate::s3) fn read_action(names_version: bool) -> &'static str {
    if names_version {
        "s3.get_object_version"
    } else {
        "s3.get_object"
    }
}

fn check_version_id(v: &str) -> S3Result<()> {
    if valid_version_id(v) {
        Ok(())
    } else {
        Err(s3_error!(InvalidArgument, "Invalid version id specified"))
    }
}

/// The version id to report for a read: a real id, or "null" once the
/// bucket has been versioned (seq > 0) or when the client named it.
fn label_of(v: &VersionRow, asked: bool) -> Option<String> {
    (!v.null || v.seq > 0 || asked).then(|| v.label().to_string())
}

/// An error carrying the headers that describe a delete marker.
fn marker_error(mut e: S3Error, m: &VersionRow) -> S3Error {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    h.insert("x-amz-delete-marker", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(m.label()) {
        h.insert("x-amz-version-id", v);
    }
    e.set_headers(h);
    e
}

fn versioning_status(v: Versioning) -> Option<BucketVersioningStatus> {
    match v {
        Versioning::Off => None,
        Versioning::Enabled => Some(BucketVersioningStatus::from_static(
            BucketVersioningStatus::ENABLED,
        )),
        Versioning::Suspended => Some(BucketVersioningStatus::from_static(
            BucketVersioningStatus::SUSPENDED,
        )),
    }
}

impl Objects {
    /// Opens the latest version of `key` (or `version_id`) for a GET or
    /// HEAD; a delete marker or a missing key is the S3 error with the
    /// marker headers. Returns also the version id to report.
    pub(in crate::s3) async fn open_for_read(
        &self,
        call: &Call,
        b: &BucketRow,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(Opened, KeyUse, Option<String>)> {
        if let Some(v) = version_id {
            check_version_id(v)?;
            call.detail("version_id", v);
        }
        match self
            .engine
            .open_version(b, key, version_id, &call.purpose())
            .await
            .map_err(s3_err)?
        {
            Found::Object(o, used, v) => Ok((*o, used, label_of(&v, version_id.is_some()))),
            Found::Marker(m) if version_id.is_some() => Err(marker_error(
                S3Error::with_message(
                    S3ErrorCode::MethodNotAllowed,
                    "The specified method is not allowed against this resource.",
                ),
                &m,
            )),
            Found::Marker(m) => Err(marker_error(s3_error!(NoSuchKey), &m)),
            Found::Missing if version_id.is_some() => Err(s3_error!(NoSuchVersion)),
            Found::Missing => Err(s3_error!(NoSuchKey)),
        }
    }

    pub(super) async fn get_bucket_versioning_inner(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.get_bucket_versioning", &req.input.bucket)
            .await?;
        let v = self
            .engine
            .store()
            .bucket_versioning(&b.id)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(GetBucketVersioningOutput {
            status: versioning_status(v),
            mfa_delete: None,
        }))
    }

    pub(super) async fn put_bucket_versioning_inner(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self
            .bucket(&call, "s3.put_bucket_versioning", &input.bucket)
            .await?;
        let cfg = input.versioning_configuration;
        if cfg
            .mfa_delete
            .as_ref()
            .is_some_and(|m| m.as_str() == MFADelete::ENABLED)
        {
            return Err(s3_error!(
                NotImplemented,
                "MFA delete is not supported; use IAM policies to restrict s3.delete_object_version"
            ));
        }
        let v = match cfg.status.as_ref().map(|s| s.as_str()) {
            Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
            Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
            _ => {
                return Err(s3_error!(
                    MalformedXML,
                    "the versioning Status must be Enabled or Suspended"
                ))
            }
        };
        call.detail("versioning", v.as_str());
        self.engine
            .store()
            .bucket_versioning_set(&b.id, v)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(PutBucketVersioningOutput {}))
    }

    pub(super) async fn delete_object_inner(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let action = match input.version_id {
            Some(_) => "s3.delete_object_version",
            None => "s3.delete_object",
        };
        let b = self.bucket(&call, action, &input.bucket).await?;
        call.note(action, format!("bucket:{}/{}", b.name, input.key));
        match input.version_id.as_deref() {
            Some(v) => {
                check_version_id(v)?;
                call.detail("version_id", v);
                let gone = self
                    .engine
                    .delete_version(&b, &input.key, v, false, false)
                    .await
                    .map_err(s3_err)?;
                Ok(S3Response::new(DeleteObjectOutput {
                    delete_marker: gone.filter(|g| g.marker).map(|_| true),
                    version_id: Some(v.to_string()),
                    ..Default::default()
                }))
            }
            None => {
                let d = self
                    .engine
                    .delete_latest(&b, &input.key)
                    .await
                    .map_err(s3_err)?;
                if let Some(m) = &d.marker {
                    call.detail("delete_marker_version_id", m);
                }
                Ok(S3Response::new(DeleteObjectOutput {
                    delete_marker: d.marker.as_ref().map(|_| true),
                    version_id: d.marker,
                    ..Default::default()
                }))
            }
        }
    }

    pub(super) async fn delete_objects_inner(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let call = Call::of(&req)?;
        let input = &req.input;
        // Naming versions removes data for good: the whole batch needs the
        // stronger action.
        let action = if input.delete.objects.iter().any(|o| o.version_id.is_some()) {
            "s3.delete_object_version"
        } else {
            "s3.delete_object"
        };
        let b = self.bucket(&call, action, &input.bucket).await?;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        let failed = |key: &str, version: Option<String>, code: &str, msg: &str| Error {
            key: Some(key.to_string()),
            version_id: version,
            code: Some(code.into()),
            message: Some(msg.into()),
        };
        for o in &input.delete.objects {
            match o.version_id.as_deref() {
                Some(v) if !valid_version_id(v) => errors.push(failed(
                    &o.key,
                    Some(v.to_string()),
                    "InvalidArgument",
                    "Invalid version id specified",
                )),
                Some(v) => match self
                    .engine
                    .delete_version(&b, &o.key, v, false, false)
                    .await
                {
                    Ok(_) if quiet => {}
                    Ok(gone) => {
                        let marker = gone.filter(|g| g.marker);
                        deleted.push(DeletedObject {
                            key: Some(o.key.clone()),
                            version_id: Some(v.to_string()),
                            delete_marker: marker.as_ref().map(|_| true),
                            delete_marker_version_id: marker.map(|m| m.label().to_string()),
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.detail, "batch delete of one version failed");
                        errors.push(failed(
                            &o.key,
                            Some(v.to_string()),
                            "InternalError",
                            "the version could not be deleted",
                        ))
                    }
                },
                None => match self.engine.delete_latest(&b, &o.key).await {
                    Ok(_) if quiet => {}
                    Ok(d) => deleted.push(DeletedObject {
                        key: Some(o.key.clone()),
                        delete_marker: d.marker.as_ref().map(|_| true),
                        delete_marker_version_id: d.marker,
                        ..Default::default()
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e.detail, "batch delete of one key failed");
                        errors.push(failed(
                            &o.key,
                            None,
                            "InternalError",
                            "the object could not be deleted",
                        ))
                    }
                },
            }
        }
        call.detail("keys", &input.delete.objects.len().to_string());
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    pub(super) async fn list_object_versions_inner(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self
            .bucket(&call, "s3.list_bucket_versions", &input.bucket)
            .await?;
        if input.version_id_marker.is_some() && input.key_marker.is_none() {
            return Err(s3_error!(
                InvalidArgument,
                "A version-id marker cannot be specified without a key marker."
            ));
        }
        if let Some(v) = input.version_id_marker.as_deref() {
            check_version_id(v)?;
        }
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let l = self
            .engine
            .list_versions(
                &b,
                &prefix,
                input.delimiter.as_deref(),
                input.key_marker.as_deref(),
                input.version_id_marker.as_deref(),
                usize::try_from(max).unwrap_or(0),
            )
            .await
            .map_err(s3_err)?;
        let url = is_url(&input.encoding_type);
        let key_of = |k: &str| {
            if url {
                url_encode(k)
            } else {
                k.to_string()
            }
        };
        let owner = Owner {
            id: Some(b.org_id.clone()),
            display_name: None,
        };
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        for v in &l.versions {
            if v.marker {
                markers.push(DeleteMarkerEntry {
                    is_latest: Some(v.latest),
                    key: Some(key_of(&v.row.key)),
                    last_modified: Some(timestamp(v.row.created_at)),
                    owner: Some(owner.clone()),
                    version_id: Some(v.label().to_string()),
                });
            } else {
                versions.push(ObjectVersion {
                    e_tag: Some(ETag::Strong(v.row.etag.clone())),
                    is_latest: Some(v.latest),
                    key: Some(key_of(&v.row.key)),
                    last_modified: Some(timestamp(v.row.created_at)),
                    owner: Some(owner.clone()),
                    size: Some(v.row.size),
                    storage_class: Some(ObjectVersionStorageClass::from_static(
                        ObjectVersionStorageClass::STANDARD,
                    )),
                    version_id: Some(v.label().to_string()),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(b.name.clone()),
            prefix: enc(url, input.prefix),
            delimiter: enc(url, input.delimiter),
            key_marker: enc(url, input.key_marker),
            version_id_marker: input.version_id_marker,
            max_keys: Some(max),
            is_truncated: Some(l.truncated),
            next_key_marker: enc(url, l.next_key.filter(|_| l.truncated)),
            next_version_id_marker: l.next_version.filter(|_| l.truncated),
            versions: Some(versions),
            delete_markers: (!markers.is_empty()).then_some(markers),
            common_prefixes: (!l.prefixes.is_empty()).then(|| {
                l.prefixes
                    .iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(key_of(p)),
                    })
                    .collect()
            }),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}
