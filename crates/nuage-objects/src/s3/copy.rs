//! CopyObject and UploadPartCopy. A copy is a read of the source (checked
//! with `s3.get_object` on its bucket) streamed into a write of the target
//! (`s3.put_object` on its bucket): the bytes are decrypted and encrypted
//! again under a fresh data key of the target bucket's project key, so a
//! copy between projects never shares a key.

use std::collections::BTreeMap;

use futures::StreamExt;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::conditions::Conditions;
use super::ops::{customer_key, put_err, s3_err, sse, timestamp, Call, Objects, Sums};
use super::tagging;
use crate::checksum::{Algo, BodyCheck};
use crate::engine::{Meta, Opened, MAX_PART_NUMBER};
use crate::sse_c::CustomerKey;

/// S3's limit for one CopyObject (larger objects copy by UploadPartCopy).
const MAX_COPY: i64 = 5 * 1024 * 1024 * 1024;

/// A copy source: its bucket and version, opened for reading.
struct Source {
    bucket: nuage_store::BucketRow,
    object: Opened,
    /// The source's version id to report (versioned source buckets).
    version: Option<String>,
}

/// A `bytes=first-last` copy range within an object of `size` bytes.
pub(super) fn copy_range(range: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first \
             and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let (first, last) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(s3_error!(
            InvalidRange,
            "Range specified is not valid for source object of size: {size}"
        ));
    }
    Ok((first, last - first + 1))
}

/// Opens the copy source of a CopyObject or UploadPartCopy input (they
/// name these fields alike) with its SSE-C key, checks its
/// `x-amz-copy-source-if-*` conditions, and parses the target's SSE-C key.
macro_rules! open_source {
    ($objects:expr, $call:expr, $input:expr) => {{
        let source_key = customer_key(
            &$input.copy_source_sse_customer_algorithm,
            &$input.copy_source_sse_customer_key,
            &$input.copy_source_sse_customer_key_md5,
        )?;
        let target_key = customer_key(
            &$input.sse_customer_algorithm,
            &$input.sse_customer_key,
            &$input.sse_customer_key_md5,
        )?;
        let src = $objects
            .source(&$call, &$input.copy_source, source_key.as_ref())
            .await?;
        Conditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
        .check_source(&src.object.row.etag, src.object.row.created_at)?;
        (src, target_key)
    }};
}

impl Objects {
    /// Resolves and opens a copy source for `call`.
    async fn source(
        &self,
        call: &Call,
        src: &CopySource,
        key: Option<&CustomerKey>,
    ) -> S3Result<Source> {
        let CopySource::Bucket {
            bucket,
            key: name,
            version_id,
        } = src
        else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        let b = self
            .bucket(call, super::ops::read_action(version_id.is_some()), bucket)
            .await?;
        call.detail("copy_source", &format!("{bucket}/{name}"));
        let (mut o, used, version) = self
            .open_for_read(call, &b, name, version_id.as_deref())
            .await?;
        call.record_use(&used);
        o.unlock(key).map_err(s3_err)?;
        Ok(Source {
            bucket: b,
            object: o,
            version,
        })
    }

    fn source_body(
        &self,
        o: &Opened,
        offset: u64,
        len: u64,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send>> {
        self.engine.read(o, offset, len).boxed()
    }

    pub(super) async fn copy_object_inner(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        if input.key.len() > 1024 {
            return Err(s3_error!(KeyTooLongError));
        }
        let (src, ck) = open_source!(self, call, input);
        let o = &src.object;
        if o.row.size > MAX_COPY {
            return Err(s3_error!(
                InvalidRequest,
                "The specified copy source is larger than the maximum allowable size for a copy \
                 source: {MAX_COPY}"
            ));
        }
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        let replace_meta = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let replace_tags = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        // Copying a named version onto its key restores it (versioned buckets).
        let named = matches!(
            &input.copy_source,
            CopySource::Bucket {
                version_id: Some(_),
                ..
            }
        );
        if src.bucket.id == b.id && o.row.key == input.key && !replace_meta && !named {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata, storage class, website redirect \
                 location or encryption attributes."
            ));
        }
        let mut meta = if replace_meta {
            Meta {
                user: input.metadata.unwrap_or_default().into_iter().collect(),
                content_type: input.content_type,
                content_disposition: input.content_disposition,
                cache_control: input.cache_control,
                content_encoding: input.content_encoding,
                content_language: input.content_language,
                expires: input.expires.as_ref().map(super::ops::http_date),
                tags: BTreeMap::new(),
                checksum: None,
                sse_c: None,
            }
        } else {
            Meta {
                checksum: None,
                sse_c: None,
                ..o.meta.clone()
            }
        };
        meta.tags = if replace_tags {
            match &input.tagging {
                Some(t) => tagging::parse_header(t)?,
                None => BTreeMap::new(),
            }
        } else {
            o.meta.tags.clone()
        };
        let algo = match &input.checksum_algorithm {
            Some(a) => Algo::parse(a.as_str())
                .ok_or_else(|| s3_error!(InvalidRequest, "unknown checksum algorithm"))?,
            None => o
                .meta
                .checksum
                .as_ref()
                .filter(|c| c.parts.is_none())
                .map_or(Algo::Crc64nvme, |c| c.algorithm),
        };
        let check = BodyCheck {
            algo,
            ..BodyCheck::default()
        };
        let size = u64::try_from(o.row.size).unwrap_or(0);
        let body = self.source_body(o, 0, size);
        let (row, meta, used, version) = self
            .engine
            .put(
                &b,
                &input.key,
                body,
                &meta,
                &check,
                &nuage_store::WriteIf::Always,
                ck.as_ref(),
                &call.purpose(),
            )
            .await
            .map_err(put_err)?;
        call.record_use(&used);
        call.detail("version_id", &row.version_id);
        let sums = Sums::of(meta.checksum.as_ref());
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(row.etag)),
                last_modified: Some(timestamp(row.created_at)),
                checksum_crc32: sums.crc32,
                checksum_crc32c: sums.crc32c,
                checksum_crc64nvme: sums.crc64nvme,
                checksum_sha1: sums.sha1,
                checksum_sha256: sums.sha256,
                checksum_type: sums.kind,
            }),
            copy_source_version_id: src.version.clone(),
            version_id: version,
            server_side_encryption: sse(),
            ssekms_key_id: Some(b.key_id.clone()),
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            ..Default::default()
        }))
    }

    pub(super) async fn upload_part_copy_inner(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let number = i64::from(input.part_number);
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(s3_error!(
                InvalidArgument,
                "part numbers run from 1 to {MAX_PART_NUMBER}"
            ));
        }
        let (src, ck) = open_source!(self, call, input);
        let o = &src.object;
        let size = u64::try_from(o.row.size).unwrap_or(0);
        let (offset, len) = match &input.copy_source_range {
            Some(r) => copy_range(r, size)?,
            None => (0, size),
        };
        if i64::try_from(len).unwrap_or(i64::MAX) > MAX_COPY {
            return Err(s3_error!(
                InvalidRequest,
                "a copied part may not exceed {MAX_COPY} bytes"
            ));
        }
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        call.detail("upload_id", &input.upload_id);
        call.detail("part_number", &number.to_string());
        let up = self
            .engine
            .store()
            .upload_get(&b.id, &input.key, &input.upload_id)
            .await
            .map_err(s3_err)?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let body = self.source_body(o, offset, len);
        let (part, used) = self
            .engine
            .upload_part(
                &b,
                &up,
                number,
                body,
                &BodyCheck::default(),
                ck.as_ref(),
                &call.purpose(),
            )
            .await
            .map_err(put_err)?;
        call.record_use(&used);
        let sums = Sums::of_part(&part);
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(part.etag)),
                last_modified: Some(timestamp(part.created_at)),
                checksum_crc32: sums.crc32,
                checksum_crc32c: sums.crc32c,
                checksum_crc64nvme: sums.crc64nvme,
                checksum_sha1: sums.sha1,
                checksum_sha256: sums.sha256,
            }),
            server_side_encryption: sse(),
            ssekms_key_id: Some(b.key_id.clone()),
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::copy_range;

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), (0, 10));
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), (5, 1));
        assert!(copy_range("bytes=5-10", 10).is_err());
        assert!(copy_range("bytes=6-5", 10).is_err());
        assert!(copy_range("bytes=-5", 10).is_err());
        assert!(copy_range("5-6", 10).is_err());
    }
}
