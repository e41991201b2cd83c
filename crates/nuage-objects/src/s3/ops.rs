//! The S3 operations. Each one names its platform action, resolves the
//! bucket, asks the shared authorizer about the bucket's project and then
//! works through the engine; errors become S3 error codes here.
//!
//! A bucket of another organization answers exactly as a missing one
//! (NoSuchBucket), so names of other tenants' buckets are never confirmed.
//!
//! Multipart operations all write (or reveal) an upload's content, so they
//! take `s3.put_object`; ListMultipartUploads lists, `s3.list_bucket`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use nuage_core::model::kms::Justification;
use nuage_core::time::now_ms;
use nuage_core::ApiError;
use nuage_iam::{Authorizer, Env, Subject, Target};
use nuage_kms::{KeyUse, Purpose};
use nuage_store::{BucketRow, WriteIf};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use super::auth::Anonymous;
use super::conditions::{body_check, Claimed, Conditions};
use super::front::ReqCtx;
use super::tagging;
use crate::buckets;
use crate::checksum::{self, Algo, Mismatch};
use crate::engine::{BodyError, Engine, Listing, Meta, PutError, MAX_PART_NUMBER};
use crate::settings::BucketSettings;
use crate::sse_c::CustomerKey;

mod lifecycle;
mod versioning;
pub(super) use versioning::read_action;

/// Header naming the project of a CreateBucket when the organization has
/// several (S3 has no notion of projects).
const PROJECT_HEADER: &str = "x-nuage-project";

pub struct Objects {
    pub(super) engine: Engine,
    authz: Arc<Authorizer>,
    region: String,
}

impl Objects {
    pub fn new(engine: Engine, authz: Arc<Authorizer>, region: String) -> Self {
        Objects {
            engine,
            authz,
            region,
        }
    }
}

/// The authenticated caller of one request.
pub(super) struct Call {
    /// `None` for an anonymous read (see [`Call::of_public`]).
    subject: Option<Subject>,
    ctx: ReqCtx,
}

impl Call {
    /// The signed caller of a request.
    pub(super) fn of<T>(req: &S3Request<T>) -> S3Result<Call> {
        let call = Call::of_public(req)?;
        call.who()?;
        Ok(call)
    }

    /// The caller of an object read, which may be anonymous.
    pub(super) fn of_public<T>(req: &S3Request<T>) -> S3Result<Call> {
        let subject = req.extensions.get::<Subject>().cloned();
        if subject.is_none() && req.extensions.get::<Anonymous>().is_none() {
            return Err(s3_error!(AccessDenied, "not authenticated"));
        }
        let ctx = req
            .extensions
            .get::<ReqCtx>()
            .cloned()
            .ok_or_else(|| s3_error!(InternalError, "request context missing"))?;
        Ok(Call { subject, ctx })
    }

    pub(super) fn who(&self) -> S3Result<&Subject> {
        self.subject.as_ref().ok_or_else(|| {
            s3_error!(
                AccessDenied,
                "anonymous requests may only read objects of public-read buckets"
            )
        })
    }

    /// The caller's organization ("" for anonymous callers, who own nothing).
    pub(super) fn org_id(&self) -> &str {
        self.subject
            .as_ref()
            .map_or("", |s| s.principal.org_id.as_str())
    }

    pub(super) fn note(&self, action: &str, resource: String) {
        self.ctx.slot.update(|a| {
            a.action = Some(action.to_string());
            a.resource = Some(resource);
        });
    }

    pub(super) fn decided(&self, decision: &'static str, policies: Vec<String>) {
        self.ctx.slot.update(|a| {
            a.decision = Some(decision);
            a.policies = policies;
        });
    }

    pub(super) fn detail(&self, name: &str, value: &str) {
        self.ctx
            .slot
            .update(|a| drop(a.details.insert(name.to_string(), value.to_string())));
    }

    pub(super) fn record_use(&self, used: &KeyUse) {
        self.ctx.slot.update(|a| a.details.extend(used.details()));
    }

    pub(super) fn purpose(&self) -> Purpose {
        Purpose {
            justification: Justification::ServiceForPrincipal,
            principal: self.subject.as_ref().map(|s| s.principal.id.clone()),
            request_id: Some(self.ctx.request_id.clone()),
        }
    }

    pub(super) fn env(&self) -> Env {
        Env {
            source_ip: self.ctx.source.clone(),
            now_secs: now_ms() / 1000,
        }
    }
}

fn request_id<T>(req: &S3Request<T>) -> Option<String> {
    req.extensions.get::<ReqCtx>().map(|c| c.request_id.clone())
}

fn tag(rid: Option<String>) -> impl FnOnce(S3Error) -> S3Error {
    move |mut e| {
        if let Some(r) = rid {
            e.set_request_id(r);
        }
        e
    }
}

/// The S3 form of a platform error.
pub(super) fn s3_err(e: ApiError) -> S3Error {
    match (e.status.as_u16(), e.code) {
        (
            _,
            "key_disabled" | "key_destroyed" | "key_destroy_scheduled" | "justification_denied",
        ) => {
            // The bucket's project key refuses: the objects are unreadable
            // until it is enabled again (or for good once destroyed).
            S3Error::with_message(
                S3ErrorCode::AccessDenied,
                format!("the bucket's encryption key refuses this use: {}", e.detail),
            )
        }
        (403, "quota_exceeded") => {
            let mut s =
                S3Error::with_message(S3ErrorCode::Custom("QuotaExceeded".into()), e.detail);
            s.set_status_code(http::StatusCode::FORBIDDEN);
            s
        }
        (401, _) => S3Error::with_message(S3ErrorCode::InvalidAccessKeyId, e.detail),
        (403, _) => S3Error::with_message(S3ErrorCode::AccessDenied, e.detail),
        (503, _) => S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.detail),
        (507, _) => {
            let mut s =
                S3Error::with_message(S3ErrorCode::Custom("InsufficientStorage".into()), e.detail);
            s.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
            s
        }
        (400, "invalid_part") => S3Error::with_message(S3ErrorCode::InvalidPart, e.detail),
        (400, "invalid_part_order") => {
            S3Error::with_message(S3ErrorCode::InvalidPartOrder, e.detail)
        }
        (400, "entity_too_small") => S3Error::with_message(S3ErrorCode::EntityTooSmall, e.detail),
        (400, "malformed_xml") => S3Error::with_message(S3ErrorCode::MalformedXML, e.detail),
        (400, "invalid_bucket_name") => {
            S3Error::with_message(S3ErrorCode::InvalidBucketName, e.detail)
        }
        (400, _) => S3Error::with_message(S3ErrorCode::InvalidRequest, e.detail),
        _ => {
            tracing::error!(code = e.code, detail = %e.detail, "S3 operation failed");
            S3Error::new(S3ErrorCode::InternalError)
        }
    }
}

pub(super) fn timestamp(ms: i64) -> Timestamp {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Timestamp::from(t)
}

pub(super) fn no_such_bucket(name: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NoSuchBucket,
        format!("The specified bucket does not exist: {name}"),
    )
}

/// `encoding-type=url`: percent-encodes all but unreserved characters and '/'.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body of a GET, fed by a task that decrypts ahead of the client.
struct Body(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl Stream for Body {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

pub(super) fn put_err(e: PutError) -> S3Error {
    match e {
        PutError::Api(e) if e.code == "not_found" => s3_error!(NoSuchUpload),
        PutError::Api(e) if e.code == "precondition_failed" => {
            S3Error::with_message(S3ErrorCode::PreconditionFailed, e.detail)
        }
        PutError::Body(BodyError::Checksum(Mismatch::Differs(a))) => S3Error::with_message(
            S3ErrorCode::BadDigest,
            format!(
                "The {} you specified did not match the calculated checksum.",
                a.name()
            ),
        ),
        PutError::Body(BodyError::Checksum(Mismatch::MissingTrailer(a))) => S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            format!(
                "the announced {} trailer is missing or malformed",
                a.header()
            ),
        ),
        PutError::Api(e) => s3_err(e),
        PutError::Body(BodyError::TooLarge) => s3_error!(EntityTooLarge),
        PutError::Body(BodyError::Timeout) => s3_error!(RequestTimeout),
        PutError::Body(BodyError::BadDigest) => s3_error!(BadDigest),
        PutError::Body(BodyError::Client(m)) => {
            S3Error::with_message(S3ErrorCode::IncompleteBody, m)
        }
    }
}

/// The SSE-C key of a request, from its three headers (all or none).
pub(super) fn customer_key(
    algorithm: &Option<String>,
    key: &Option<String>,
    key_md5: &Option<String>,
) -> S3Result<Option<CustomerKey>> {
    CustomerKey::from_headers(algorithm.as_deref(), key.as_deref(), key_md5.as_deref())
        .map_err(s3_err)
}

/// An anonymous caller's bucket: only an object read of a public-read
/// bucket passes. A private bucket and a missing one answer alike.
fn public_bucket(
    call: &Call,
    action: &'static str,
    found: Option<BucketRow>,
) -> S3Result<BucketRow> {
    let public = found.filter(|b| {
        action == "s3.get_object" && BucketSettings::of(b).is_ok_and(|s| s.public_read)
    });
    match public {
        Some(b) => {
            call.ctx.slot.update(|a| {
                a.log_id = Some(b.org_id.clone());
                a.principal_name = "anonymous".into();
            });
            call.decided("allow", vec!["public-read".into()]);
            Ok(b)
        }
        None => {
            call.decided("deny", Vec::new());
            Err(s3_error!(AccessDenied, "Access Denied"))
        }
    }
}

/// The store condition of a conditional PUT.
fn write_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<WriteIf> {
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(s3_error!(
            NotImplemented,
            "If-Match and If-None-Match together are not supported on writes"
        )),
        (Some(ETagCondition::ETag(e)), None) => Ok(WriteIf::ETag(e.value().to_string())),
        (Some(ETagCondition::Any), None) => Err(s3_error!(
            NotImplemented,
            "If-Match: * is not supported on writes"
        )),
        (None, Some(ETagCondition::Any)) => Ok(WriteIf::Absent),
        (None, Some(ETagCondition::ETag(_))) => Err(s3_error!(
            NotImplemented,
            "If-None-Match on writes takes only '*'"
        )),
        (None, None) => Ok(WriteIf::Always),
    }
}

/// An HTTP date (`Expires`), as stored.
pub(super) fn http_date(t: &Timestamp) -> String {
    let mut out = Vec::new();
    match t.format(TimestampFormat::HttpDate, &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).to_string(),
        Err(_) => String::new(),
    }
}

fn parse_http_date(s: &str) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, s).ok()
}

fn wants_checksum(mode: &Option<ChecksumMode>) -> bool {
    mode.as_ref()
        .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
}

fn tag_count(tags: &BTreeMap<String, String>) -> Option<i32> {
    (!tags.is_empty()).then(|| i32::try_from(tags.len()).unwrap_or(i32::MAX))
}

/// A stored checksum spread over S3's per-algorithm fields.
#[derive(Default)]
pub(super) struct Sums {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub kind: Option<ChecksumType>,
}

impl Sums {
    pub(super) fn of(c: Option<&checksum::Stored>) -> Sums {
        let Some(c) = c else {
            return Sums::default();
        };
        let mut s = Sums::at(c.algorithm, c.wire());
        s.kind = Some(ChecksumType::from(c.kind().to_string()));
        s
    }

    fn at(algo: Algo, value: String) -> Sums {
        let mut s = Sums::default();
        let slot = match algo {
            Algo::Crc32 => &mut s.crc32,
            Algo::Crc32c => &mut s.crc32c,
            Algo::Crc64nvme => &mut s.crc64nvme,
            Algo::Sha1 => &mut s.sha1,
            Algo::Sha256 => &mut s.sha256,
        };
        *slot = Some(value);
        s
    }

    /// A part's checksum ("ALGO:value" in its row).
    pub(super) fn of_part(p: &nuage_store::PartRow) -> Sums {
        p.checksum
            .as_deref()
            .and_then(|c| c.split_once(':'))
            .and_then(|(a, v)| Some(Sums::at(Algo::parse(a)?, v.to_string())))
            .unwrap_or_default()
    }
}

pub(super) fn sse() -> Option<ServerSideEncryption> {
    Some(ServerSideEncryption::from_static(
        ServerSideEncryption::AWS_KMS,
    ))
}

/// The bytes a GET of an object of `size` bytes sends for `range`: start,
/// length and `Content-Range`. s3s's check lets a suffix range of an empty
/// object through as `0..0`, which has no last byte to name: like every
/// other range of an empty object, it is InvalidRange.
fn byte_range(range: Option<Range>, size: u64) -> S3Result<(u64, u64, Option<String>)> {
    let Some(range) = range else {
        return Ok((0, size, None));
    };
    let r = range.check(size).map_err(|_| s3_error!(InvalidRange))?;
    let last = r
        .end
        .checked_sub(1)
        .filter(|&last| last >= r.start)
        .ok_or_else(|| s3_error!(InvalidRange))?;
    let content_range = format!("bytes {}-{last}/{size}", r.start);
    Ok((r.start, r.end - r.start, Some(content_range)))
}

/// The shared start of GetObject and HeadObject (their inputs name these
/// fields alike): the bucket for the read action, the version opened, its
/// SSE-C key checked, the conditional headers judged.
macro_rules! open_read {
    ($objects:expr, $call:expr, $input:expr) => {{
        let action = versioning::read_action($input.version_id.is_some());
        let b = $objects.bucket(&$call, action, &$input.bucket).await?;
        $call.note(action, format!("bucket:{}/{}", b.name, $input.key));
        let ck = customer_key(
            &$input.sse_customer_algorithm,
            &$input.sse_customer_key,
            &$input.sse_customer_key_md5,
        )?;
        let (mut o, used, version) = $objects
            .open_for_read(&$call, &b, &$input.key, $input.version_id.as_deref())
            .await?;
        $call.record_use(&used);
        o.unlock(ck.as_ref()).map_err(s3_err)?;
        Conditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
        .check_read(&o.row.etag, o.row.created_at)?;
        (b, o, version, ck)
    }};
}

impl Objects {
    /// Resolves `name` for `action`: missing and foreign buckets are
    /// NoSuchBucket, a refusal is AccessDenied; both reach the audit entry.
    pub(super) async fn bucket(
        &self,
        call: &Call,
        action: &'static str,
        name: &str,
    ) -> S3Result<BucketRow> {
        call.note(action, format!("bucket:{name}"));
        let store = self.engine.store();
        // One read: the bucket and its project's name.
        let found = store.bucket_get_with_project(name).await.map_err(s3_err)?;
        if call.subject.is_none() {
            return public_bucket(call, action, found.map(|(b, _)| b));
        }
        let Some((b, project)) = found.filter(|(b, _)| b.org_id == call.org_id()) else {
            call.decided("deny", Vec::new());
            return Err(no_such_bucket(name));
        };
        let project = project.ok_or_else(|| no_such_bucket(name))?;
        call.detail("project", &project);
        self.decide(
            call,
            action,
            &Target::project(&b.org_id, &b.project_id, &project),
        )
        .await?;
        Ok(b)
    }

    pub(super) async fn decide(
        &self,
        call: &Call,
        action: &'static str,
        target: &Target,
    ) -> S3Result<()> {
        let d = self
            .authz
            .decide(call.who()?, action, target, &call.env())
            .await
            .map_err(s3_err)?;
        call.decided(if d.allowed { "allow" } else { "deny" }, d.policies);
        if d.allowed {
            Ok(())
        } else {
            Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                format!(
                    "{} may not {action} on {}",
                    call.who()?.principal.name,
                    target.label()
                ),
            ))
        }
    }

    async fn list_buckets_inner(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let call = Call::of(&req)?;
        let store = self.engine.store();
        call.note("s3.list_buckets", format!("org:{}", call.org_id()));
        let rows = store
            .bucket_list(call.org_id(), None, "", 10_000)
            .await
            .map_err(s3_err)?;
        let mut allowed: BTreeMap<String, bool> = BTreeMap::new();
        let mut policies = Vec::new();
        let mut out = Vec::new();
        for b in rows {
            if !allowed.contains_key(&b.project_id) {
                let ok = match store
                    .project_get(&b.org_id, &b.project_id)
                    .await
                    .map_err(s3_err)?
                {
                    Some(p) => {
                        let d = self
                            .authz
                            .decide(
                                call.who()?,
                                "s3.list_buckets",
                                &Target::project(&p.org_id, &p.id, &p.name),
                                &call.env(),
                            )
                            .await
                            .map_err(s3_err)?;
                        policies.extend(d.policies);
                        d.allowed
                    }
                    None => false,
                };
                allowed.insert(b.project_id.clone(), ok);
            }
            if allowed.get(&b.project_id).copied().unwrap_or(false) {
                out.push(Bucket {
                    name: Some(b.name.clone()),
                    creation_date: Some(timestamp(b.created_at)),
                    bucket_region: Some(self.region.clone()),
                });
            }
        }
        policies.sort();
        policies.dedup();
        call.decided("allow", policies);
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(out),
            owner: Some(Owner {
                id: Some(call.org_id().to_string()),
                display_name: call.who()?.org.as_ref().map(|o| o.name.clone()),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket_inner(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let call = Call::of(&req)?;
        let name = req.input.bucket.clone();
        call.note("s3.create_bucket", format!("bucket:{name}"));
        let store = self.engine.store();
        let project = match req.headers.get(PROJECT_HEADER) {
            Some(v) => {
                let p = v
                    .to_str()
                    .map_err(|_| s3_error!(InvalidArgument, "bad {PROJECT_HEADER} header"))?;
                store
                    .project_get(call.org_id(), p)
                    .await
                    .map_err(s3_err)?
                    .ok_or_else(|| {
                        S3Error::with_message(
                            S3ErrorCode::InvalidArgument,
                            format!("no project {p:?}"),
                        )
                    })?
            }
            None => {
                let page = store
                    .project_list(
                        call.org_id(),
                        &nuage_core::page::PageRequest {
                            limit: 2,
                            after: None,
                        },
                    )
                    .await
                    .map_err(s3_err)?;
                match <[_; 1]>::try_from(page.items) {
                    Ok([p]) => p,
                    Err(_) => {
                        return Err(s3_error!(
                            InvalidArgument,
                            "the organization has several projects (or none): name one with the \
                             {PROJECT_HEADER} header, or use `nuage bucket create -p <project>`"
                        ))
                    }
                }
            }
        };
        call.detail("project", &project.name);
        self.decide(
            &call,
            "s3.create_bucket",
            &Target::project(&project.org_id, &project.id, &project.name),
        )
        .await?;
        match buckets::create(
            store,
            self.engine.kms(),
            &project,
            &name,
            &call.who()?.principal.id,
        )
        .await
        {
            Ok(_) => Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{name}")),
            })),
            Err(e) if e.code == "already_exists" => {
                let mine = store
                    .bucket_get(&name)
                    .await
                    .map_err(s3_err)?
                    .is_some_and(|b| b.org_id == call.org_id());
                Err(if mine {
                    s3_error!(BucketAlreadyOwnedByYou)
                } else {
                    s3_error!(BucketAlreadyExists)
                })
            }
            Err(e) => Err(s3_err(e)),
        }
    }

    async fn put_object_inner(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        if input.key.len() > 1024 {
            return Err(s3_error!(KeyTooLongError));
        }
        let check = body_check(
            input.content_md5.as_deref(),
            Claimed {
                algorithm: input.checksum_algorithm.as_ref().map(|a| a.as_str()),
                crc32: input.checksum_crc32.as_ref(),
                crc32c: input.checksum_crc32c.as_ref(),
                crc64nvme: input.checksum_crc64nvme.as_ref(),
                sha1: input.checksum_sha1.as_ref(),
                sha256: input.checksum_sha256.as_ref(),
            },
            &req.headers,
            req.trailing_headers.as_ref(),
        )?;
        let ck = customer_key(
            &input.sse_customer_algorithm,
            &input.sse_customer_key,
            &input.sse_customer_key_md5,
        )?;
        let cond = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let meta = Meta {
            user: input.metadata.unwrap_or_default().into_iter().collect(),
            content_type: input.content_type,
            content_disposition: input.content_disposition,
            cache_control: input.cache_control,
            content_encoding: input.content_encoding,
            content_language: input.content_language,
            expires: input.expires.as_ref().map(http_date),
            tags: match &input.tagging {
                Some(t) => tagging::parse_header(t)?,
                None => BTreeMap::new(),
            },
            checksum: None,
            sse_c: None,
        };
        let body = input
            .body
            .map(|b| b.boxed())
            .unwrap_or_else(|| futures::stream::empty::<Result<Bytes, s3s::StdError>>().boxed());
        let (row, meta, used, version) = self
            .engine
            .put(
                &b,
                &input.key,
                body,
                &meta,
                &check,
                &cond,
                ck.as_ref(),
                &call.purpose(),
            )
            .await
            .map_err(|e| match e {
                // If-Match on a key without an object.
                PutError::Api(e) if e.code == "not_found" => s3_error!(NoSuchKey),
                e => put_err(e),
            })?;
        call.record_use(&used);
        call.detail("version_id", &row.version_id);
        let sums = Sums::of(meta.checksum.as_ref());
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(row.etag)),
            version_id: version,
            server_side_encryption: sse(),
            ssekms_key_id: Some(b.key_id.clone()),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            ..Default::default()
        }))
    }

    async fn get_object_inner(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let call = Call::of_public(&req)?;
        let input = req.input;
        let (b, o, version, ck) = open_read!(self, call, input);
        let size = u64::try_from(o.row.size).unwrap_or(0);
        let (start, len, content_range) = byte_range(input.range, size)?;
        // A body that fits in one read window is read and decrypted at once
        // (no task, no channel); a larger one streams.
        let body = match self.engine.read_inline(&o, start, len).await {
            Some(Ok(bytes)) => StreamingBlob::from(s3s::Body::from(bytes)),
            Some(Err(e)) => {
                tracing::error!(error = %e, "object body read failed");
                return Err(s3_error!(
                    InternalError,
                    "the object body could not be read"
                ));
            }
            None => {
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let mut chunks = Box::pin(self.engine.read(&o, start, len));
                tokio::spawn(async move {
                    while let Some(c) = chunks.next().await {
                        let failed = c.is_err();
                        if let Err(e) = &c {
                            tracing::error!(error = %e, "object body read failed");
                        }
                        if tx.send(c).await.is_err() || failed {
                            return;
                        }
                    }
                });
                StreamingBlob::wrap(Body(rx))
            }
        };
        let m = o.meta;
        // The checksum covers the whole object: a range gets none.
        let sums = Sums::of(
            m.checksum
                .as_ref()
                .filter(|_| wants_checksum(&input.checksum_mode) && len == size),
        );
        Ok(S3Response::new(GetObjectOutput {
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            tag_count: tag_count(&m.tags),
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            expires: m.expires.as_deref().and_then(parse_http_date),
            body: Some(body),
            content_length: Some(i64::try_from(len).unwrap_or(0)),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(o.row.etag.clone())),
            last_modified: Some(timestamp(o.row.created_at)),
            version_id: version,
            metadata: (!m.user.is_empty()).then(|| m.user.into_iter().collect()),
            content_type: m.content_type,
            content_disposition: m.content_disposition,
            cache_control: m.cache_control,
            content_encoding: m.content_encoding,
            content_language: m.content_language,
            server_side_encryption: Some(ServerSideEncryption::from_static(
                ServerSideEncryption::AWS_KMS,
            )),
            ssekms_key_id: Some(b.key_id.clone()),
            ..Default::default()
        }))
    }

    async fn head_object_inner(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let call = Call::of_public(&req)?;
        let input = req.input;
        let (b, o, version, ck) = open_read!(self, call, input);
        let m = o.meta;
        let sums = Sums::of(
            m.checksum
                .as_ref()
                .filter(|_| wants_checksum(&input.checksum_mode)),
        );
        Ok(S3Response::new(HeadObjectOutput {
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            expires: m.expires.as_deref().and_then(parse_http_date),
            content_length: Some(o.row.size),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(o.row.etag.clone())),
            last_modified: Some(timestamp(o.row.created_at)),
            version_id: version,
            metadata: (!m.user.is_empty()).then(|| m.user.into_iter().collect()),
            content_type: m.content_type,
            content_disposition: m.content_disposition,
            cache_control: m.cache_control,
            content_encoding: m.content_encoding,
            content_language: m.content_language,
            server_side_encryption: Some(ServerSideEncryption::from_static(
                ServerSideEncryption::AWS_KMS,
            )),
            ssekms_key_id: Some(b.key_id.clone()),
            ..Default::default()
        }))
    }

    /// The upload `upload_id` of `key`, or NoSuchUpload.
    async fn upload(
        &self,
        b: &BucketRow,
        key: &str,
        upload_id: &str,
    ) -> S3Result<nuage_store::UploadRow> {
        self.engine
            .store()
            .upload_get(&b.id, key, upload_id)
            .await
            .map_err(s3_err)?
            .ok_or_else(|| s3_error!(NoSuchUpload))
    }

    async fn create_multipart_upload_inner(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        if input.key.len() > 1024 {
            return Err(s3_error!(KeyTooLongError));
        }
        let ck = customer_key(
            &input.sse_customer_algorithm,
            &input.sse_customer_key,
            &input.sse_customer_key_md5,
        )?;
        let meta = Meta {
            user: input.metadata.unwrap_or_default().into_iter().collect(),
            content_type: input.content_type,
            content_disposition: input.content_disposition,
            cache_control: input.cache_control,
            content_encoding: input.content_encoding,
            content_language: input.content_language,
            expires: input.expires.as_ref().map(http_date),
            tags: match &input.tagging {
                Some(t) => tagging::parse_header(t)?,
                None => BTreeMap::new(),
            },
            checksum: None,
            sse_c: None,
        };
        let (up, used) = self
            .engine
            .create_upload(
                &b,
                &input.key,
                &meta,
                &call.who()?.principal.id,
                ck.as_ref(),
                &call.purpose(),
            )
            .await
            .map_err(s3_err)?;
        call.record_use(&used);
        call.detail("upload_id", &up.upload_id);
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(b.name.clone()),
            key: Some(input.key),
            upload_id: Some(up.upload_id),
            server_side_encryption: sse(),
            ssekms_key_id: Some(b.key_id.clone()),
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            ..Default::default()
        }))
    }

    async fn upload_part_inner(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        call.detail("upload_id", &input.upload_id);
        call.detail("part_number", &input.part_number.to_string());
        let number = i64::from(input.part_number);
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(s3_error!(
                InvalidArgument,
                "part numbers run from 1 to {MAX_PART_NUMBER}"
            ));
        }
        let up = self.upload(&b, &input.key, &input.upload_id).await?;
        let ck = customer_key(
            &input.sse_customer_algorithm,
            &input.sse_customer_key,
            &input.sse_customer_key_md5,
        )?;
        let check = body_check(
            input.content_md5.as_deref(),
            Claimed {
                algorithm: input.checksum_algorithm.as_ref().map(|a| a.as_str()),
                crc32: input.checksum_crc32.as_ref(),
                crc32c: input.checksum_crc32c.as_ref(),
                crc64nvme: input.checksum_crc64nvme.as_ref(),
                sha1: input.checksum_sha1.as_ref(),
                sha256: input.checksum_sha256.as_ref(),
            },
            &req.headers,
            req.trailing_headers.as_ref(),
        )?;
        let body = input
            .body
            .map(|b| b.boxed())
            .unwrap_or_else(|| futures::stream::empty::<Result<Bytes, s3s::StdError>>().boxed());
        let (part, used) = self
            .engine
            .upload_part(&b, &up, number, body, &check, ck.as_ref(), &call.purpose())
            .await
            .map_err(put_err)?;
        call.record_use(&used);
        let sums = Sums::of_part(&part);
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(part.etag)),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            server_side_encryption: sse(),
            ssekms_key_id: Some(b.key_id.clone()),
            sse_customer_algorithm: ck.as_ref().map(|_| "AES256".to_string()),
            sse_customer_key_md5: ck.as_ref().map(|c| c.key_md5().to_string()),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload_inner(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        call.detail("upload_id", &input.upload_id);
        let up = self.upload(&b, &input.key, &input.upload_id).await?;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| match (p.part_number, p.e_tag) {
                (Some(n), Some(e)) => Ok((i64::from(n), e.value().to_string())),
                _ => Err(s3_error!(MalformedXML, "a part lacks its number or ETag")),
            })
            .collect::<S3Result<Vec<_>>>()?;
        let (row, version) = self
            .engine
            .complete_upload(&b, &up, &listed, &call.purpose())
            .await
            .map_err(|e| match e.code {
                "not_found" => s3_error!(NoSuchUpload),
                _ => s3_err(e),
            })?;
        call.detail("version_id", &row.version_id);
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(b.name.clone()),
            key: Some(row.key.clone()),
            e_tag: Some(ETag::Strong(row.etag)),
            location: Some(format!("/{}/{}", b.name, row.key)),
            version_id: version,
            server_side_encryption: sse(),
            ssekms_key_id: Some(b.key_id.clone()),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload_inner(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        call.detail("upload_id", &input.upload_id);
        let up = self.upload(&b, &input.key, &input.upload_id).await?;
        if !self
            .engine
            .abort_upload(&b, &up.upload_id)
            .await
            .map_err(s3_err)?
        {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts_inner(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.put_object", &input.bucket).await?;
        call.note("s3.put_object", format!("bucket:{}/{}", b.name, input.key));
        call.detail("upload_id", &input.upload_id);
        let up = self.upload(&b, &input.key, &input.upload_id).await?;
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000);
        let after = input.part_number_marker.unwrap_or(0);
        let mut parts = self
            .engine
            .store()
            .upload_parts(&up.upload_id, i64::from(after), i64::from(max) + 1)
            .await
            .map_err(s3_err)?;
        let truncated = parts.len() > usize::try_from(max).unwrap_or(0);
        parts.truncate(usize::try_from(max).unwrap_or(0));
        let next = parts
            .last()
            .and_then(|p| i32::try_from(p.part_number).ok())
            .filter(|_| truncated);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(b.name.clone()),
            key: Some(up.key.clone()),
            upload_id: Some(up.upload_id.clone()),
            max_parts: Some(max),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| Part {
                        part_number: i32::try_from(p.part_number).ok(),
                        size: Some(p.size),
                        e_tag: Some(ETag::Strong(p.etag)),
                        last_modified: Some(timestamp(p.created_at)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads_inner(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self.bucket(&call, "s3.list_bucket", &input.bucket).await?;
        let max = input.max_uploads.unwrap_or(1000).clamp(0, 1000);
        let want = usize::try_from(max).unwrap_or(0);
        let prefix = input.prefix.clone().unwrap_or_default();
        let prefix_hex = nuage_store::key_hex(&prefix);
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        // After the key marker: uploads of later keys, or of that key with
        // a later upload id when an upload id marker is given. A marker
        // that is a common prefix skips everything under it.
        let mut after_hex = match input.key_marker.as_deref() {
            Some(m) if delimiter.as_deref().is_some_and(|d| m.ends_with(d)) => {
                format!("{}g", nuage_store::key_hex(m))
            }
            Some(m) => nuage_store::key_hex(m),
            None => String::new(),
        };
        let mut after_upload = input
            .upload_id_marker
            .clone()
            .filter(|_| input.key_marker.is_some());
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        // The last entry returned: (key or common prefix, upload id).
        let mut last: Option<(String, Option<String>)> = None;
        let mut truncated = false;
        'pages: loop {
            let page = self
                .engine
                .store()
                .upload_list(
                    &b.id,
                    &prefix_hex,
                    &after_hex,
                    after_upload.as_deref(),
                    i64::from(max) + 1,
                )
                .await
                .map_err(s3_err)?;
            let n = page.len();
            for u in page {
                if uploads.len() + prefixes.len() == want {
                    truncated = true;
                    break 'pages;
                }
                let common = delimiter.as_deref().and_then(|d| {
                    u.key
                        .get(prefix.len()..)
                        .and_then(|rest| rest.find(d))
                        .map(|i| u.key[..prefix.len() + i + d.len()].to_string())
                });
                match common {
                    Some(cp) => {
                        // Skip every upload under this prefix, then page on.
                        after_hex = format!("{}g", nuage_store::key_hex(&cp));
                        after_upload = None;
                        last = Some((cp.clone(), None));
                        prefixes.push(cp);
                        continue 'pages;
                    }
                    None => {
                        after_hex = nuage_store::key_hex(&u.key);
                        after_upload = Some(u.upload_id.clone());
                        last = Some((u.key.clone(), Some(u.upload_id.clone())));
                        uploads.push(u);
                    }
                }
            }
            if n <= want || n == 0 {
                break;
            }
        }
        let next = last.filter(|_| truncated);
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(b.name.clone()),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max),
            is_truncated: Some(truncated),
            next_key_marker: next.as_ref().map(|(k, _)| k.clone()),
            next_upload_id_marker: next.and_then(|(_, u)| u),
            common_prefixes: (!prefixes.is_empty()).then(|| {
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect()
            }),
            uploads: Some(
                uploads
                    .iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key.clone()),
                        upload_id: Some(u.upload_id.clone()),
                        initiated: Some(timestamp(u.created_at)),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    /// A listing page; `after_hex` is the cursor (see `nuage_store::key_hex`).
    async fn listing(
        &self,
        b: &BucketRow,
        prefix: &str,
        delimiter: Option<&str>,
        after_hex: String,
        max_keys: Option<i32>,
    ) -> S3Result<(Listing, i32)> {
        let max = max_keys.unwrap_or(1000).clamp(0, 1000);
        let l = self
            .engine
            .list(
                b,
                prefix,
                delimiter,
                after_hex,
                usize::try_from(max).unwrap_or(0),
            )
            .await
            .map_err(s3_err)?;
        Ok((l, max))
    }
}

fn objects_of(l: &Listing, url: bool) -> Vec<Object> {
    l.objects
        .iter()
        .map(|r| Object {
            key: Some(if url {
                url_encode(&r.key)
            } else {
                r.key.clone()
            }),
            size: Some(r.size),
            e_tag: Some(ETag::Strong(r.etag.clone())),
            last_modified: Some(timestamp(r.created_at)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn prefixes_of(l: &Listing, url: bool) -> Vec<CommonPrefix> {
    l.prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(if url { url_encode(p) } else { p.clone() }),
        })
        .collect()
}

fn is_url(e: &Option<EncodingType>) -> bool {
    e.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL)
}

fn enc(url: bool, s: Option<String>) -> Option<String> {
    s.map(|s| if url { url_encode(&s) } else { s })
}

#[async_trait::async_trait]
impl S3 for Objects {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let rid = request_id(&req);
        self.list_buckets_inner(req).await.map_err(tag(rid))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let rid = request_id(&req);
        self.create_bucket_inner(req).await.map_err(tag(rid))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let rid = request_id(&req);
        let r = async {
            let call = Call::of(&req)?;
            self.bucket(&call, "s3.get_bucket", &req.input.bucket)
                .await?;
            Ok(S3Response::new(HeadBucketOutput {
                bucket_region: Some(self.region.clone()),
                ..Default::default()
            }))
        };
        r.await.map_err(tag(rid))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let rid = request_id(&req);
        let r = async {
            let call = Call::of(&req)?;
            self.bucket(&call, "s3.get_bucket", &req.input.bucket)
                .await?;
            // us-east-1 is spelt as no constraint at all.
            let location = (self.region != "us-east-1")
                .then(|| BucketLocationConstraint::from(self.region.clone()));
            Ok(S3Response::new(GetBucketLocationOutput {
                location_constraint: location,
            }))
        };
        r.await.map_err(tag(rid))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let rid = request_id(&req);
        let r = async {
            let call = Call::of(&req)?;
            let b = self
                .bucket(&call, "s3.delete_bucket", &req.input.bucket)
                .await?;
            self.engine
                .store()
                .bucket_delete(&b.id)
                .await
                .map_err(|e| match e.code {
                    "bucket_not_empty" => s3_error!(BucketNotEmpty),
                    _ => s3_err(e),
                })?;
            Ok(S3Response::new(DeleteBucketOutput {}))
        };
        r.await.map_err(tag(rid))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let rid = request_id(&req);
        self.put_object_inner(req).await.map_err(tag(rid))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let rid = request_id(&req);
        self.get_object_inner(req).await.map_err(tag(rid))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let rid = request_id(&req);
        self.head_object_inner(req).await.map_err(tag(rid))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let rid = request_id(&req);
        self.delete_object_inner(req).await.map_err(tag(rid))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let rid = request_id(&req);
        self.delete_objects_inner(req).await.map_err(tag(rid))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let rid = request_id(&req);
        let r = async {
            let call = Call::of(&req)?;
            let input = req.input;
            let b = self.bucket(&call, "s3.list_bucket", &input.bucket).await?;
            let prefix = input.prefix.clone().unwrap_or_default();
            let cursor = match (&input.continuation_token, &input.start_after) {
                (Some(t), _) => {
                    if !t
                        .bytes()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'g').contains(&c))
                    {
                        return Err(s3_error!(InvalidArgument, "invalid continuation token"));
                    }
                    t.clone()
                }
                (None, Some(s)) => nuage_store::key_hex(s),
                (None, None) => String::new(),
            };
            let (l, max) = self
                .listing(
                    &b,
                    &prefix,
                    input.delimiter.as_deref(),
                    cursor,
                    input.max_keys,
                )
                .await?;
            let url = is_url(&input.encoding_type);
            let count = l.objects.len() + l.prefixes.len();
            Ok(S3Response::new(ListObjectsV2Output {
                name: Some(b.name.clone()),
                prefix: enc(url, input.prefix),
                delimiter: enc(url, input.delimiter),
                start_after: enc(url, input.start_after),
                max_keys: Some(max),
                key_count: Some(i32::try_from(count).unwrap_or(i32::MAX)),
                continuation_token: input.continuation_token,
                is_truncated: Some(l.truncated),
                next_continuation_token: l.next.clone().filter(|_| l.truncated),
                contents: Some(objects_of(&l, url)),
                common_prefixes: (!l.prefixes.is_empty()).then(|| prefixes_of(&l, url)),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        };
        r.await.map_err(tag(rid))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let rid = request_id(&req);
        let r = async {
            let call = Call::of(&req)?;
            let input = req.input;
            let b = self.bucket(&call, "s3.list_bucket", &input.bucket).await?;
            let prefix = input.prefix.clone().unwrap_or_default();
            let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
            let cursor = match &input.marker {
                // A marker that is a common prefix skips everything under it.
                Some(m) if delimiter.as_deref().is_some_and(|d| m.ends_with(d)) => {
                    format!("{}g", nuage_store::key_hex(m))
                }
                Some(m) => nuage_store::key_hex(m),
                None => String::new(),
            };
            let (l, max) = self
                .listing(&b, &prefix, delimiter.as_deref(), cursor, input.max_keys)
                .await?;
            let url = is_url(&input.encoding_type);
            let last = l
                .objects
                .last()
                .map(|o| o.key.clone())
                .into_iter()
                .chain(l.prefixes.last().cloned())
                .max();
            Ok(S3Response::new(ListObjectsOutput {
                name: Some(b.name.clone()),
                prefix: enc(url, input.prefix),
                delimiter: enc(url, input.delimiter),
                marker: enc(url, input.marker),
                max_keys: Some(max),
                is_truncated: Some(l.truncated),
                next_marker: enc(url, last.filter(|_| l.truncated && delimiter.is_some())),
                contents: Some(objects_of(&l, url)),
                common_prefixes: (!l.prefixes.is_empty()).then(|| prefixes_of(&l, url)),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        };
        r.await.map_err(tag(rid))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let rid = request_id(&req);
        self.create_multipart_upload_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let rid = request_id(&req);
        self.upload_part_inner(req).await.map_err(tag(rid))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let rid = request_id(&req);
        self.complete_multipart_upload_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let rid = request_id(&req);
        self.abort_multipart_upload_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let rid = request_id(&req);
        self.list_parts_inner(req).await.map_err(tag(rid))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let rid = request_id(&req);
        self.list_multipart_uploads_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let rid = request_id(&req);
        self.get_object_tagging_inner(req).await.map_err(tag(rid))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let rid = request_id(&req);
        self.put_object_tagging_inner(req).await.map_err(tag(rid))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let rid = request_id(&req);
        self.delete_object_tagging_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let rid = request_id(&req);
        self.get_bucket_versioning_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        let rid = request_id(&req);
        self.get_bucket_tagging_inner(req).await.map_err(tag(rid))
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        let rid = request_id(&req);
        self.put_bucket_tagging_inner(req).await.map_err(tag(rid))
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        let rid = request_id(&req);
        self.delete_bucket_tagging_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let rid = request_id(&req);
        self.put_bucket_versioning_inner(req)
            .await
            .map_err(tag(rid))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let rid = request_id(&req);
        self.copy_object_inner(req).await.map_err(tag(rid))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let rid = request_id(&req);
        self.upload_part_copy_inner(req).await.map_err(tag(rid))
    }

    async fn get_bucket_encryption(
        &self,
        req: S3Request<GetBucketEncryptionInput>,
    ) -> S3Result<S3Response<GetBucketEncryptionOutput>> {
        let rid = request_id(&req);
        let r = async {
            let call = Call::of(&req)?;
            let b = self
                .bucket(&call, "s3.get_bucket", &req.input.bucket)
                .await?;
            // Always on: every object under a data key wrapped by the
            // project key the bucket was created with.
            Ok(S3Response::new(GetBucketEncryptionOutput {
                server_side_encryption_configuration: Some(ServerSideEncryptionConfiguration {
                    rules: vec![ServerSideEncryptionRule {
                        apply_server_side_encryption_by_default: Some(
                            ServerSideEncryptionByDefault {
                                kms_master_key_id: Some(b.key_id.clone()),
                                sse_algorithm: ServerSideEncryption::from_static(
                                    ServerSideEncryption::AWS_KMS,
                                ),
                            },
                        ),
                        bucket_key_enabled: Some(true),
                    }],
                }),
            }))
        };
        r.await.map_err(tag(rid))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let rid = request_id(&req);
        self.put_bucket_acl_inner(req).await.map_err(tag(rid))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let rid = request_id(&req);
        self.get_bucket_acl_inner(req).await.map_err(tag(rid))
    }

    async fn put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let rid = request_id(&req);
        self.put_bucket_cors_inner(req).await.map_err(tag(rid))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        let rid = request_id(&req);
        self.get_bucket_cors_inner(req).await.map_err(tag(rid))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        let rid = request_id(&req);
        self.delete_bucket_cors_inner(req).await.map_err(tag(rid))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let rid = request_id(&req);
        self.list_object_versions_inner(req).await.map_err(tag(rid))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let rid = request_id(&req);
        self.put_lifecycle_inner(req).await.map_err(tag(rid))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let rid = request_id(&req);
        self.get_lifecycle_inner(req).await.map_err(tag(rid))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        let rid = request_id(&req);
        self.delete_lifecycle_inner(req).await.map_err(tag(rid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(header: &str) -> Range {
        Range::parse(header).expect("a valid Range header")
    }

    #[test]
    fn a_suffix_range_of_an_empty_object_is_invalid_not_a_panic() {
        let e = byte_range(Some(range("bytes=-5")), 0).expect_err("unsatisfiable");
        assert_eq!(*e.code(), S3ErrorCode::InvalidRange);
        let e = byte_range(Some(range("bytes=0-")), 0).expect_err("unsatisfiable");
        assert_eq!(*e.code(), S3ErrorCode::InvalidRange);
    }

    #[test]
    fn ranges_name_their_bytes() {
        assert_eq!(byte_range(None, 0).ok(), Some((0, 0, None)));
        assert_eq!(
            byte_range(Some(range("bytes=-5")), 3).ok(),
            Some((0, 3, Some("bytes 0-2/3".into())))
        );
        assert_eq!(
            byte_range(Some(range("bytes=2-100")), 10).ok(),
            Some((2, 8, Some("bytes 2-9/10".into())))
        );
        let e = byte_range(Some(range("bytes=10-")), 10).expect_err("past the end");
        assert_eq!(*e.code(), S3ErrorCode::InvalidRange);
    }
}
