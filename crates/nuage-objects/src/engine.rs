//! Object bodies in files, metadata in the control plane store.
//!
//! A PUT streams the body through the key service's chunked AEAD into a
//! temporary file, fsyncs it, renames it to its final name (and fsyncs the
//! directory), and only then commits the version row: a crash before the
//! commit leaves an unreferenced file that [`Engine::collect_garbage`]
//! removes at the next start, never a partial object; an acknowledged PUT
//! is on disk and in the store. The replaced version's body and data key go
//! after the commit (a crash there leaves garbage, not loss).
//!
//! Small bodies (up to [`INLINE_BODY`]) skip the file: the same sealed
//! stream is kept in the version row and commits with it, in the store's
//! group commit, which is what makes a small PUT cheap (no file creation,
//! rename or fsync of its own).
//!
//! Every version has its own data key from the key service, wrapped by the
//! bucket's project key; metadata is sealed under that same data key.
//!
//! Multipart uploads store each part the same way (its own data key, its
//! own file under `parts/`, durable before its row commits). Complete does
//! not copy bytes: the version's body is its parts read in order, so a GET
//! decrypts only the chunks of the parts a range touches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::aead::{self, SecretKey};
use nuage_kms::stream::{self, StreamEncryptor, DEFAULT_CHUNK_SIZE, HEADER_LEN, TAG_LEN};
use nuage_kms::{KeyUse, Kms, Purpose};
use nuage_store::{BucketRow, ObjectRow, PartRow, Replaced, Store, UploadRow, WriteIf};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::FileExt;
use tokio::io::AsyncWriteExt;

use crate::checksum::{self, BodyCheck, Mismatch};
use crate::sse_c::{self, CustomerKey, SseC};

mod body_file;
mod versioning;
pub use body_file::BodyFile;
pub use versioning::{valid_version_id, Found, VersionListing};

/// Plaintext bytes decrypted per read of a GET (a multiple of the chunk size).
const READ_CHUNKS: u64 = 16;

/// Bodies up to this size are gathered in memory and written in one
/// blocking task; larger ones stream.
const SMALL_BODY: u64 = 4 * DEFAULT_CHUNK_SIZE as u64;

/// Bodies up to this size (plaintext) are kept sealed in their version row
/// instead of a file: they then commit with the row, in its group, with no
/// file creation, rename or fsync of their own (see migration 0012).
const INLINE_BODY: u64 = 16 * 1024;

/// Age after which a data key without its version or part is garbage.
const ORPHAN_KEY_AGE_MS: i64 = 24 * 3600 * 1000;

/// Part numbers S3 clients may use.
pub const MAX_PART_NUMBER: i64 = 10_000;

/// What a client stored beside the body: user metadata and the standard
/// headers returned on GET. Sealed, since names and types reveal content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    #[serde(default)]
    pub user: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// The `Expires` header, as the client sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Object tags (S3 allows ten).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<checksum::Stored>,
    /// Set when the body is also under a client-held key (SSE-C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_c: Option<SseC>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest single PUT, and largest part.
    pub max_object_size: u64,
    /// Smallest part of a completed multipart upload but the last (S3: 5 MiB).
    pub min_part_size: u64,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_object_size: 5 * 1024 * 1024 * 1024,
            min_part_size: 5 * 1024 * 1024,
            body_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    store: Store,
    kms: Kms,
    dir: PathBuf,
    cfg: EngineConfig,
}

/// A stored version opened for reading: its row, metadata and data key.
pub struct Opened {
    pub row: ObjectRow,
    pub meta: Meta,
    dek: SecretKey,
    /// The parts of a multipart version, in order (their keys are
    /// unwrapped only when a read reaches them).
    parts: Vec<PartRow>,
    project_id: String,
    why: Purpose,
    /// The client's key of an SSE-C object, once [`Opened::unlock`]ed.
    customer: Option<CustomerKey>,
    /// The sealed body of a version kept in its row.
    inline: Option<Bytes>,
}

impl Opened {
    /// Checks the request's SSE-C key against the object's (both or
    /// neither) and keeps it for reading the body.
    pub fn unlock(&mut self, key: Option<&CustomerKey>) -> ApiResult<()> {
        sse_c::check(self.meta.sse_c.as_ref(), key, &self.dek)?;
        self.customer = key.cloned();
        Ok(())
    }
}

/// A body written durably under its final name but not yet referenced by
/// a row: dropping it removes the file.
struct Written {
    total: u64,
    md5: [u8; 16],
    /// The body's checksum (base64) in the algorithm of its `BodyCheck`.
    checksum: String,
    guard: TempFile,
    /// The sealed body, when it stays in the version row (no file).
    inline: Option<Vec<u8>>,
}

/// Removes a temporary file unless the write it belongs to completed
/// (also when the request is cancelled mid-body).
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |e| {
        tracing::error!(error = %e, "object storage: {what}");
        if e.raw_os_error() == Some(28) {
            return ApiError::new(
                http::StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the object store is full",
            );
        }
        ApiError::internal(format!("object storage: {what}"))
    }
}

fn stream_err(e: stream::StreamError) -> ApiError {
    tracing::error!(error = %e, "object body does not decrypt");
    ApiError::internal("a stored object body does not decrypt")
}

fn body_aad(bucket_id: &str, version_id: &str) -> Vec<u8> {
    format!("nuage object v1|{bucket_id}|{version_id}").into_bytes()
}

fn part_aad(bucket_id: &str, part_id: &str) -> Vec<u8> {
    format!("nuage object part v1|{bucket_id}|{part_id}").into_bytes()
}

fn meta_aad(bucket_id: &str, version_id: &str) -> Vec<u8> {
    format!("nuage object meta v1|{bucket_id}|{version_id}").into_bytes()
}

/// The error of a body that ended badly.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Timeout,
    /// The body does not match its Content-MD5.
    BadDigest,
    /// The body does not match its additional checksum.
    Checksum(Mismatch),
    Client(String),
}

/// Why a PUT failed: the body, or the platform.
#[derive(Debug)]
pub enum PutError {
    Body(BodyError),
    Api(ApiError),
}

impl From<ApiError> for PutError {
    fn from(e: ApiError) -> Self {
        PutError::Api(e)
    }
}

impl Engine {
    /// Opens the object area under `data_dir`.
    pub fn open(
        store: Store,
        kms: Kms,
        data_dir: &Path,
        cfg: EngineConfig,
    ) -> std::io::Result<Engine> {
        let dir = data_dir.join("objects");
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("bodies"))?;
        std::fs::create_dir_all(dir.join("parts"))?;
        Ok(Engine {
            store,
            kms,
            dir,
            cfg,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn kms(&self) -> &Kms {
        &self.kms
    }

    fn body_path(&self, version_id: &str) -> PathBuf {
        self.fanned("bodies", version_id)
    }

    fn part_path(&self, part_id: &str) -> PathBuf {
        self.fanned("parts", part_id)
    }

    fn fanned(&self, area: &str, id: &str) -> PathBuf {
        let fan = id.get(id.len().saturating_sub(2)..).unwrap_or("00");
        self.dir.join(area).join(fan).join(id)
    }

    /// Removes what crashes left behind: temporary files, bodies no version
    /// row refers to, part files no part row refers to (all older than
    /// `before`, so requests running meanwhile are safe), and data keys
    /// drawn for versions or parts that never committed — only those older
    /// than a day, since another server sharing the database may still be
    /// receiving a body. The second count includes those keys.
    pub async fn collect_garbage(&self, before: SystemTime) -> ApiResult<(u64, u64)> {
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < before)
        };
        let mut temps = 0;
        for e in std::fs::read_dir(self.dir.join("tmp"))
            .map_err(io_err("gc"))?
            .flatten()
        {
            if old(&e.path()) && std::fs::remove_file(e.path()).is_ok() {
                temps += 1;
            }
        }
        let mut orphans = 0;
        for area in ["bodies", "parts"] {
            for fan in std::fs::read_dir(self.dir.join(area))
                .map_err(io_err("gc"))?
                .flatten()
            {
                let Ok(files) = std::fs::read_dir(fan.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if !old(&f.path()) {
                        continue;
                    }
                    let referenced = match area {
                        "bodies" => self.store.object_version_exists(&name).await?,
                        _ => self.store.part_exists(&name).await?,
                    };
                    if !referenced && std::fs::remove_file(f.path()).is_ok() {
                        orphans += 1;
                    }
                }
            }
        }
        let keys = self
            .store
            .object_orphan_data_keys_delete(now_ms() - ORPHAN_KEY_AGE_MS)
            .await?;
        Ok((temps, orphans + keys))
    }

    /// Streams `body` through the chunked AEAD into a temporary file, then
    /// fsyncs and renames it to `final_path` (fsyncing the directory); a
    /// body of at most `inline_max` bytes is only sealed, for its row.
    #[allow(clippy::too_many_arguments)]
    async fn write_body<S, E>(
        &self,
        key: &SecretKey,
        aad: &[u8],
        id: &str,
        final_path: PathBuf,
        mut body: S,
        check: &BodyCheck,
        inline_max: u64,
    ) -> Result<Written, PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Gather a small body whole first: it is then encrypted here and
        // written, fsynced and renamed in one blocking task.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0u64;
        let ended = loop {
            if head_len > SMALL_BODY {
                break false;
            }
            let next = tokio::time::timeout(self.cfg.body_timeout, body.next())
                .await
                .map_err(|_| PutError::Body(BodyError::Timeout))?;
            let Some(piece) = next else { break true };
            let piece = piece.map_err(|e| PutError::Body(BodyError::Client(e.to_string())))?;
            head_len += piece.len() as u64;
            if head_len > self.cfg.max_object_size {
                return Err(PutError::Body(BodyError::TooLarge));
            }
            head.push(piece);
        };
        if ended {
            return self
                .write_small(key, aad, id, final_path, &head, head_len, check, inline_max)
                .await;
        }
        let mut body = futures::stream::iter(head.into_iter().map(Ok::<Bytes, E>)).chain(body);

        let tmp_path = self.dir.join("tmp").join(id);
        let mut guard = TempFile(Some(tmp_path.clone()));
        let file = tokio::fs::File::create(&tmp_path)
            .await
            .map_err(io_err("create a temporary file"))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let (mut enc, header) =
            StreamEncryptor::new(key, aad, DEFAULT_CHUNK_SIZE).map_err(stream_err)?;
        out.write_all(&header).await.map_err(io_err("write"))?;
        let cs = DEFAULT_CHUNK_SIZE;
        let mut buf: Vec<u8> = Vec::with_capacity(cs + TAG_LEN);
        let mut md5 = Md5::new();
        let mut sum = check.algo.hasher();
        let mut total = 0u64;
        loop {
            let next = tokio::time::timeout(self.cfg.body_timeout, body.next())
                .await
                .map_err(|_| PutError::Body(BodyError::Timeout))?;
            let Some(piece) = next else { break };
            let piece = piece.map_err(|e| PutError::Body(BodyError::Client(e.to_string())))?;
            total += piece.len() as u64;
            if total > self.cfg.max_object_size {
                return Err(PutError::Body(BodyError::TooLarge));
            }
            md5.update(&piece);
            sum.update(&piece);
            let mut rest = &piece[..];
            while !rest.is_empty() {
                // A full buffer is sealed as non-final only once more bytes
                // are known to follow.
                if buf.len() == cs {
                    enc.encrypt_chunk(&mut buf, false).map_err(stream_err)?;
                    out.write_all(&buf).await.map_err(io_err("write"))?;
                    buf.clear();
                }
                let take = (cs - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
        enc.encrypt_chunk(&mut buf, true).map_err(stream_err)?;
        out.write_all(&buf).await.map_err(io_err("write"))?;
        out.flush().await.map_err(io_err("write"))?;
        let md5: [u8; 16] = md5.finalize().into();
        if check.md5.as_deref().is_some_and(|m| m != md5.as_slice()) {
            return Err(PutError::Body(BodyError::BadDigest));
        }
        let checksum = sum.finish();
        check
            .verify(&checksum)
            .map_err(|m| PutError::Body(BodyError::Checksum(m)))?;
        let file = out.into_inner();
        file.sync_all().await.map_err(io_err("fsync"))?;
        drop(file);

        let parent = final_path
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| ApiError::internal("object path has no parent"))?;
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(io_err("create a directory"))?;
        tokio::fs::rename(&tmp_path, &final_path)
            .await
            .map_err(io_err("rename"))?;
        guard.0 = Some(final_path);
        sync_dir(&parent)
            .await
            .map_err(io_err("fsync a directory"))?;
        Ok(Written {
            total,
            md5,
            checksum,
            guard,
            inline: None,
        })
    }

    /// [`Engine::write_body`] for a body already in memory: digests and
    /// checks it, encrypts it, then creates, writes, fsyncs and renames the
    /// file and fsyncs its directory in one blocking task (one thread hop
    /// instead of one per step).
    #[allow(clippy::too_many_arguments)]
    async fn write_small(
        &self,
        key: &SecretKey,
        aad: &[u8],
        id: &str,
        final_path: PathBuf,
        pieces: &[Bytes],
        total: u64,
        check: &BodyCheck,
        inline_max: u64,
    ) -> Result<Written, PutError> {
        let mut md5 = Md5::new();
        let mut sum = check.algo.hasher();
        let mut plain = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for p in pieces {
            md5.update(p);
            sum.update(p);
            plain.extend_from_slice(p);
        }
        let md5: [u8; 16] = md5.finalize().into();
        if check.md5.as_deref().is_some_and(|m| m != md5.as_slice()) {
            return Err(PutError::Body(BodyError::BadDigest));
        }
        let checksum = sum.finish();
        check
            .verify(&checksum)
            .map_err(|m| PutError::Body(BodyError::Checksum(m)))?;
        let cs = DEFAULT_CHUNK_SIZE;
        let (mut enc, header) = StreamEncryptor::new(key, aad, cs).map_err(stream_err)?;
        let chunks = plain.len().div_ceil(cs).max(1);
        let mut sealed = Vec::with_capacity(HEADER_LEN + plain.len() + chunks * TAG_LEN);
        sealed.extend_from_slice(&header);
        let mut buf: Vec<u8> = Vec::with_capacity(cs.min(plain.len()) + TAG_LEN);
        for i in 0..chunks {
            buf.clear();
            buf.extend_from_slice(
                &plain[(i * cs).min(plain.len())..((i + 1) * cs).min(plain.len())],
            );
            enc.encrypt_chunk(&mut buf, i + 1 == chunks)
                .map_err(stream_err)?;
            sealed.extend_from_slice(&buf);
        }
        drop(plain);
        if total <= inline_max {
            return Ok(Written {
                total,
                md5,
                checksum,
                guard: TempFile(None),
                inline: Some(sealed),
            });
        }

        let tmp_path = self.dir.join("tmp").join(id);
        let parent = final_path
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| ApiError::internal("object path has no parent"))?;
        let mut guard = TempFile(Some(tmp_path.clone()));
        let dest = final_path.clone();
        let done = tokio::task::spawn_blocking(
            move || -> Result<(), (bool, &'static str, std::io::Error)> {
                use std::io::Write;
                let early = |what| move |e| (false, what, e);
                let mut file =
                    std::fs::File::create(&tmp_path).map_err(early("create a temporary file"))?;
                file.write_all(&sealed).map_err(early("write"))?;
                file.sync_all().map_err(early("fsync"))?;
                drop(file);
                std::fs::create_dir_all(&parent).map_err(early("create a directory"))?;
                std::fs::rename(&tmp_path, &dest).map_err(early("rename"))?;
                std::fs::File::open(&parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| (true, "fsync a directory", e))
            },
        )
        .await
        .map_err(|e| ApiError::internal(format!("the body write task failed: {e}")))?;
        match done {
            Ok(()) => guard.0 = Some(final_path),
            Err((renamed, what, e)) => {
                if renamed {
                    guard.0 = Some(final_path);
                }
                return Err(io_err(what)(e).into());
            }
        }
        Ok(Written {
            total,
            md5,
            checksum,
            guard,
            inline: None,
        })
    }

    fn seal_meta(
        &self,
        key: &SecretKey,
        bucket_id: &str,
        version_id: &str,
        meta: &Meta,
    ) -> ApiResult<String> {
        let plain = serde_json::to_vec(meta)
            .map_err(|e| ApiError::internal(format!("metadata does not encode: {e}")))?;
        Ok(B64.encode(aead::wrap(key, &meta_aad(bucket_id, version_id), &plain)))
    }

    /// Stores a new current version of `key` from `body`, if `cond` still
    /// holds when it commits (`precondition_failed` otherwise; a condition
    /// on a missing key is `not_found`). The body's checksum joins `meta`.
    /// Returns also the version id to report (None in a never-versioned
    /// bucket).
    #[allow(clippy::too_many_arguments)]
    pub async fn put<S, E>(
        &self,
        bucket: &BucketRow,
        key: &str,
        body: S,
        meta: &Meta,
        check: &BodyCheck,
        cond: &WriteIf,
        customer: Option<&CustomerKey>,
        why: &Purpose,
    ) -> Result<(ObjectRow, Meta, KeyUse, Option<String>), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let version_id = format!("obv_{}", uuid::Uuid::now_v7().simple());
        let (dk, used, dek_row) = self
            .kms
            .data_key_unsaved(&bucket.project_id, &bucket.key_id, &version_id, why)
            .await?;
        let aad = body_aad(&bucket.id, &version_id);
        let body_key = customer.map_or_else(|| dk.key.clone(), |c| c.body_key(&dk.key));
        let written = self
            .write_body(
                &body_key,
                &aad,
                &version_id,
                self.body_path(&version_id),
                body,
                check,
                INLINE_BODY,
            )
            .await;
        let mut written = written?;
        let mut meta = meta.clone();
        meta.sse_c = customer.map(|c| c.record(&dk.key));
        meta.checksum = Some(checksum::Stored {
            algorithm: check.algo,
            value: written.checksum.clone(),
            parts: None,
        });
        let row = ObjectRow {
            version_id: version_id.clone(),
            bucket_id: bucket.id.clone(),
            key: key.to_string(),
            size: i64::try_from(written.total).map_err(|_| PutError::Body(BodyError::TooLarge))?,
            etag: hex::encode(written.md5),
            data_key_id: dk.id.clone(),
            sealed_meta: self.seal_meta(&dk.key, &bucket.id, &version_id, &meta)?,
            created_at: now_ms(),
            part_count: 0,
            inline_body: written.inline.take().map(|b| B64.encode(b)),
        };
        let placed = self.store.object_put(Some(&dek_row), &row, cond).await?;
        written.guard.0 = None;
        if let Some(old) = placed.replaced {
            self.discard(&old).await;
        }
        Ok((row, meta, used, placed.version_id))
    }

    /// Starts a multipart upload of `key`: reserves the version id, its
    /// data key and the sealed metadata the object will have.
    pub async fn create_upload(
        &self,
        bucket: &BucketRow,
        key: &str,
        meta: &Meta,
        created_by: &str,
        customer: Option<&CustomerKey>,
        why: &Purpose,
    ) -> ApiResult<(UploadRow, KeyUse)> {
        let version_id = format!("obv_{}", uuid::Uuid::now_v7().simple());
        let (dk, used) = self
            .kms
            .data_key(&bucket.project_id, &bucket.key_id, &version_id, why)
            .await?;
        let mut meta = meta.clone();
        meta.sse_c = customer.map(|c| c.record(&dk.key));
        let meta = &meta;
        let up = UploadRow {
            upload_id: format!("mpu_{}", uuid::Uuid::new_v4().simple()),
            bucket_id: bucket.id.clone(),
            key: key.to_string(),
            version_id: version_id.clone(),
            data_key_id: dk.id.clone(),
            sealed_meta: self.seal_meta(&dk.key, &bucket.id, &version_id, meta)?,
            created_by: created_by.to_string(),
            created_at: now_ms(),
        };
        if let Err(e) = self.store.upload_create(&up).await {
            let _ = self.kms.data_key_delete(&dk.id).await;
            return Err(e);
        }
        Ok((up, used))
    }

    /// Stores part `number` of an upload (replacing an earlier one of the
    /// same number). An upload gone meanwhile is `not_found`.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part<S, E>(
        &self,
        bucket: &BucketRow,
        up: &UploadRow,
        number: i64,
        body: S,
        check: &BodyCheck,
        customer: Option<&CustomerKey>,
        why: &Purpose,
    ) -> Result<(PartRow, KeyUse), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Parts of an SSE-C upload take the key the upload was created with.
        let (udek, _) = self
            .kms
            .unwrap(&bucket.project_id, &up.data_key_id, &up.version_id, why)
            .await?;
        let umeta = open_meta(&udek, &bucket.id, &up.version_id, &up.sealed_meta)?;
        sse_c::check(umeta.sse_c.as_ref(), customer, &udek)?;
        let part_id = format!("obp_{}", uuid::Uuid::now_v7().simple());
        let (dk, used) = self
            .kms
            .data_key(&bucket.project_id, &bucket.key_id, &part_id, why)
            .await?;
        let aad = part_aad(&bucket.id, &part_id);
        let body_key = customer.map_or_else(|| dk.key.clone(), |c| c.body_key(&dk.key));
        let written = self
            .write_body(
                &body_key,
                &aad,
                &part_id,
                self.part_path(&part_id),
                body,
                check,
                0,
            )
            .await;
        let mut written = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = self.kms.data_key_delete(&dk.id).await;
                return Err(e);
            }
        };
        let row = PartRow {
            part_id: part_id.clone(),
            upload_id: up.upload_id.clone(),
            part_number: number,
            size: i64::try_from(written.total).map_err(|_| PutError::Body(BodyError::TooLarge))?,
            etag: hex::encode(written.md5),
            data_key_id: dk.id.clone(),
            version_id: None,
            created_at: now_ms(),
            checksum: Some(format!("{}:{}", check.algo.name(), written.checksum)),
        };
        let replaced = match self.store.part_put(&row).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.kms.data_key_delete(&dk.id).await;
                return Err(e.into());
            }
        };
        written.guard.0 = None;
        if let Some(old) = replaced {
            self.discard_part(&old).await;
        }
        Ok((row, used))
    }

    /// Completes an upload from the parts the client lists (number and
    /// ETag, ascending): checks them, computes the multipart ETag and makes
    /// the object current in one metadata transaction. Errors carry the S3
    /// meaning in their code: `invalid_part`, `invalid_part_order`,
    /// `entity_too_small`, `malformed_xml`, `not_found` (the upload).
    /// Returns also the version id to report.
    pub async fn complete_upload(
        &self,
        bucket: &BucketRow,
        up: &UploadRow,
        listed: &[(i64, String)],
        why: &Purpose,
    ) -> ApiResult<(ObjectRow, Option<String>)> {
        if listed.is_empty() {
            return Err(ApiError::bad_request("malformed_xml", "no parts listed"));
        }
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(ApiError::bad_request(
                "invalid_part_order",
                "the parts are not listed in ascending order",
            ));
        }
        let stored: BTreeMap<i64, PartRow> = self
            .store
            .upload_parts(&up.upload_id, 0, MAX_PART_NUMBER + 1)
            .await?
            .into_iter()
            .map(|p| (p.part_number, p))
            .collect();
        // Every listed part must exist as listed before sizes are judged.
        let mut found = Vec::with_capacity(listed.len());
        for (n, etag) in listed {
            let etag = etag.trim().trim_matches('"');
            match stored.get(n).filter(|p| p.etag == etag) {
                Some(p) => found.push(p),
                None => {
                    return Err(ApiError::bad_request(
                        "invalid_part",
                        format!("part {n} was not uploaded or its ETag differs"),
                    ))
                }
            }
        }
        let mut chosen = Vec::with_capacity(found.len());
        let mut md5s = Md5::new();
        let mut total: i64 = 0;
        for (i, p) in found.iter().enumerate() {
            let last = i + 1 == found.len();
            if !last && u64::try_from(p.size).unwrap_or(0) < self.cfg.min_part_size {
                return Err(ApiError::bad_request(
                    "entity_too_small",
                    format!(
                        "part {} is smaller than the minimum part size ({} bytes)",
                        p.part_number, self.cfg.min_part_size
                    ),
                ));
            }
            let raw = hex::decode(&p.etag)
                .map_err(|_| ApiError::internal("a stored part ETag is not hex"))?;
            md5s.update(&raw);
            total = total.saturating_add(p.size);
            chosen.push(p.part_id.clone());
        }
        let sealed_meta = match composite_checksum(&found) {
            Some(sum) => {
                let (dek, _) = self
                    .kms
                    .unwrap(&bucket.project_id, &up.data_key_id, &up.version_id, why)
                    .await?;
                let mut meta = open_meta(&dek, &bucket.id, &up.version_id, &up.sealed_meta)?;
                meta.checksum = Some(sum);
                self.seal_meta(&dek, &bucket.id, &up.version_id, &meta)?
            }
            None => up.sealed_meta.clone(),
        };
        let row = ObjectRow {
            version_id: up.version_id.clone(),
            bucket_id: up.bucket_id.clone(),
            key: up.key.clone(),
            size: total,
            etag: format!("{}-{}", hex::encode(md5s.finalize()), listed.len()),
            data_key_id: up.data_key_id.clone(),
            sealed_meta,
            created_at: now_ms(),
            part_count: i64::try_from(listed.len()).unwrap_or(i64::MAX),
            inline_body: None,
        };
        let done = self
            .store
            .upload_complete(&up.upload_id, &row, &chosen)
            .await
            .map_err(|e| match e.code {
                "part_changed" => ApiError::bad_request("invalid_part", e.detail),
                _ => e,
            })?;
        for p in &done.unused {
            self.discard_part(p).await;
        }
        if let Some(old) = done.replaced {
            self.discard(&old).await;
        }
        Ok((row, done.version_id))
    }

    /// Aborts an upload: its rows, part files and data keys go. False when
    /// there was no such upload.
    pub async fn abort_upload(&self, bucket: &BucketRow, upload_id: &str) -> ApiResult<bool> {
        let Some((up, parts)) = self.store.upload_abort(&bucket.id, upload_id).await? else {
            return Ok(false);
        };
        for p in &parts {
            self.discard_part(p).await;
        }
        if let Err(e) = self.kms.data_key_delete(&up.data_key_id).await {
            tracing::warn!(error = %e.detail, "aborted upload's data key not removed");
        }
        Ok(true)
    }

    async fn discard_part(&self, p: &PartRow) {
        if let Err(e) = tokio::fs::remove_file(self.part_path(&p.part_id)).await {
            tracing::warn!(error = %e, part = %p.part_id, "unused part file not removed");
        }
        if let Err(e) = self.kms.data_key_delete(&p.data_key_id).await {
            tracing::warn!(error = %e.detail, "unused part data key not removed");
        }
    }

    /// Forgets a version that is no longer referenced: its body and its
    /// data key (crypto-shredding what might remain on disk).
    pub async fn discard(&self, old: &Replaced) {
        for p in &old.parts {
            self.discard_part(p).await;
        }
        let old = &old.row;
        if old.part_count == 0 && old.inline_body.is_none() {
            if let Err(e) = tokio::fs::remove_file(self.body_path(&old.version_id)).await {
                tracing::warn!(error = %e, version = %old.version_id, "old object body not removed");
            }
        }
        if let Err(e) = self.kms.data_key_delete(&old.data_key_id).await {
            tracing::warn!(error = %e.detail, "old object data key not removed");
        }
    }

    /// The current version of `key` with its data key and metadata.
    pub async fn open_object(
        &self,
        bucket: &BucketRow,
        key: &str,
        why: &Purpose,
    ) -> ApiResult<Option<(Opened, KeyUse)>> {
        let Some(row) = self.store.object_get(&bucket.id, key).await? else {
            return Ok(None);
        };
        self.open_row(bucket, row, why).await.map(Some)
    }

    /// Opens a stored version row (not a delete marker) for reading.
    pub(crate) async fn open_row(
        &self,
        bucket: &BucketRow,
        row: ObjectRow,
        why: &Purpose,
    ) -> ApiResult<(Opened, KeyUse)> {
        let (dek, used) = self
            .kms
            .unwrap(&bucket.project_id, &row.data_key_id, &row.version_id, why)
            .await?;
        let meta = open_meta(&dek, &bucket.id, &row.version_id, &row.sealed_meta)?;
        let parts = if row.part_count > 0 {
            self.store.version_parts(&row.version_id).await?
        } else {
            Vec::new()
        };
        let inline = match row.inline_body.as_deref() {
            Some(b) => Some(Bytes::from(B64.decode(b).map_err(|_| {
                ApiError::internal(format!(
                    "the stored body of version {} does not decode",
                    row.version_id
                ))
            })?)),
            None => None,
        };
        Ok((
            Opened {
                row,
                meta,
                dek,
                parts,
                project_id: bucket.project_id.clone(),
                why: why.clone(),
                customer: None,
                inline,
            },
            used,
        ))
    }

    /// Changes the metadata of an opened version in place (tags change
    /// without a new version); false when the version is gone meanwhile.
    pub async fn update_meta(
        &self,
        bucket: &BucketRow,
        mut o: Opened,
        f: impl FnOnce(&mut Meta),
    ) -> ApiResult<bool> {
        f(&mut o.meta);
        let sealed = self.seal_meta(&o.dek, &bucket.id, &o.row.version_id, &o.meta)?;
        self.store.object_set_meta(&o.row.version_id, &sealed).await
    }

    /// Plaintext bytes `offset .. offset + len` of an opened version,
    /// decrypting only the chunks they touch, a few chunks at a time. A
    /// multipart version is its parts end to end; a part's data key is
    /// unwrapped when the read reaches it.
    pub fn read(
        &self,
        o: &Opened,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        /// One sealed stream (a file, or the row's inline body) and where
        /// its plaintext sits in the object.
        struct Segment {
            path: PathBuf,
            inline: Option<Bytes>,
            start: u64,
            len: u64,
            aad: Vec<u8>,
            /// The data key, or (id, owner) to unwrap it.
            key: Result<SecretKey, (String, String)>,
        }
        enum Source {
            /// The file and the read buffer, reused window after window.
            File(std::sync::Arc<BodyFile>, Vec<u8>),
            Memory(Bytes),
        }
        struct Cur {
            index: usize,
            src: Source,
            header: Vec<u8>,
            chunk_size: u64,
            dek: SecretKey,
        }
        struct St {
            segs: Vec<Segment>,
            cur: Option<Cur>,
            customer: Option<CustomerKey>,
            kms: Kms,
            project_id: String,
            why: Purpose,
            pos: u64,
            end: u64,
        }
        let segs = if o.parts.is_empty() {
            vec![Segment {
                path: self.body_path(&o.row.version_id),
                inline: o.inline.clone(),
                start: 0,
                len: u64::try_from(o.row.size).unwrap_or(0),
                aad: body_aad(&o.row.bucket_id, &o.row.version_id),
                key: Ok(o.dek.clone()),
            }]
        } else {
            let mut start = 0u64;
            o.parts
                .iter()
                .map(|p| {
                    let len = u64::try_from(p.size).unwrap_or(0);
                    let s = Segment {
                        path: self.part_path(&p.part_id),
                        inline: None,
                        start,
                        len,
                        aad: part_aad(&o.row.bucket_id, &p.part_id),
                        key: Err((p.data_key_id.clone(), p.part_id.clone())),
                    };
                    start += len;
                    s
                })
                .collect()
        };
        let st = St {
            segs,
            cur: None,
            customer: o.customer.clone(),
            kms: self.kms.clone(),
            project_id: o.project_id.clone(),
            why: o.why.clone(),
            pos: offset,
            end: offset.saturating_add(len),
        };
        futures::stream::try_unfold(st, |mut st| async move {
            if st.pos >= st.end {
                return Ok(None);
            }
            // The first segment ending after `pos` holds it (empty ones skipped).
            let index = st.segs.partition_point(|s| s.start + s.len <= st.pos);
            let seg = st
                .segs
                .get(index)
                .ok_or_else(|| std::io::Error::other("read past the object's end"))?;
            if st.cur.as_ref().map(|c| c.index) != Some(index) {
                let dek = match &seg.key {
                    Ok(k) => k.clone(),
                    Err((id, owner)) => {
                        st.kms
                            .unwrap(&st.project_id, id, owner, &st.why)
                            .await
                            .map_err(|e| std::io::Error::other(e.detail))?
                            .0
                    }
                };
                let dek = match &st.customer {
                    Some(c) => c.body_key(&dek),
                    None => dek,
                };
                let (src, h) = match &seg.inline {
                    Some(b) => {
                        let h = b.get(..HEADER_LEN).ok_or_else(|| {
                            std::io::Error::other("the stored body is shorter than its header")
                        })?;
                        (Source::Memory(b.clone()), h.to_vec())
                    }
                    None => {
                        let path = seg.path.clone();
                        let (file, buf, h) = tokio::task::spawn_blocking(move || {
                            let file = BodyFile::open(&path)?;
                            let mut buf = Vec::new();
                            let at = file.read(0, HEADER_LEN as u64, &mut buf)?;
                            let h = buf[at].to_vec();
                            std::io::Result::Ok((file, buf, h))
                        })
                        .await
                        .map_err(std::io::Error::other)??;
                        (Source::File(std::sync::Arc::new(file), buf), h)
                    }
                };
                let parsed = stream::Header::parse(&h).map_err(std::io::Error::other)?;
                st.cur = Some(Cur {
                    index,
                    src,
                    header: h,
                    chunk_size: parsed.chunk_size() as u64,
                    dek,
                });
            }
            let cur = st
                .cur
                .as_mut()
                .ok_or_else(|| std::io::Error::other("object body not open"))?;
            let local = st.pos - seg.start;
            let local_end = st.end.min(seg.start + seg.len) - seg.start;
            let window = cur.chunk_size * READ_CHUNKS;
            let piece_end = local_end.min((local / window + 1) * window);
            let piece_len = piece_end - local;
            let span = stream::chunk_span(seg.len, cur.chunk_size as usize, local, piece_len)
                .map_err(std::io::Error::other)?;
            let (start, end) = (span.ciphertext.start, span.ciphertext.end);
            let plain = match &mut cur.src {
                Source::Memory(b) => {
                    let fetched = b
                        .get(start as usize..end as usize)
                        .ok_or_else(|| std::io::Error::other("the stored body is truncated"))?;
                    stream::decrypt_range(
                        &cur.dek,
                        &seg.aad,
                        &cur.header,
                        seg.len,
                        fetched,
                        local,
                        piece_len,
                    )
                }
                Source::File(file, buf) => {
                    let file = file.clone();
                    let mut taken = std::mem::take(buf);
                    let (taken, at) = tokio::task::spawn_blocking(move || {
                        let at = file.read(start, end, &mut taken)?;
                        std::io::Result::Ok((taken, at))
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    *buf = taken;
                    stream::decrypt_range(
                        &cur.dek,
                        &seg.aad,
                        &cur.header,
                        seg.len,
                        &buf[at],
                        local,
                        piece_len,
                    )
                }
            }
            .map_err(std::io::Error::other)?;
            st.pos += piece_len;
            Ok(Some((Bytes::from(plain), st)))
        })
    }

    /// Plaintext bytes `offset .. offset + len` of an opened single-file
    /// version in one buffer, read and decrypted in one blocking task, when
    /// they fit in one read window of [`Engine::read`]; None otherwise
    /// (multipart versions, larger reads: stream them).
    pub async fn read_inline(
        &self,
        o: &Opened,
        offset: u64,
        len: u64,
    ) -> Option<std::io::Result<Bytes>> {
        if !o.parts.is_empty() || len > (DEFAULT_CHUNK_SIZE as u64) * READ_CHUNKS {
            return None;
        }
        if len == 0 {
            return Some(Ok(Bytes::new()));
        }
        let path = self.body_path(&o.row.version_id);
        let size = u64::try_from(o.row.size).unwrap_or(0);
        let aad = body_aad(&o.row.bucket_id, &o.row.version_id);
        let dek = match &o.customer {
            Some(c) => c.body_key(&o.dek),
            None => o.dek.clone(),
        };
        if let Some(b) = &o.inline {
            return Some(decrypt_sealed(&dek, &aad, b, size, offset, len));
        }
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            let file = std::fs::File::open(&path)?;
            let mut header = vec![0u8; HEADER_LEN];
            file.read_exact_at(&mut header, 0)?;
            let parsed = stream::Header::parse(&header).map_err(std::io::Error::other)?;
            let span = stream::chunk_span(size, parsed.chunk_size(), offset, len)
                .map_err(std::io::Error::other)?;
            let mut fetched = vec![0u8; (span.ciphertext.end - span.ciphertext.start) as usize];
            file.read_exact_at(&mut fetched, span.ciphertext.start)?;
            let plain = stream::decrypt_range(&dek, &aad, &header, size, &fetched, offset, len)
                .map_err(std::io::Error::other)?;
            Ok(Bytes::from(plain))
        })
        .await;
        Some(read.map_err(std::io::Error::other).and_then(|r| r))
    }

    /// Deletes the current version of `key`; false when there was none.
    pub async fn delete(&self, bucket: &BucketRow, key: &str) -> ApiResult<bool> {
        match self.store.object_delete(&bucket.id, key).await? {
            Some(old) => {
                self.discard(&old).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One page of a listing: keys after `after_hex` (a hex cursor, see
    /// `nuage_store::key_hex`) under `prefix`, keys sharing the part up to
    /// the next `delimiter` rolled into one common prefix.
    pub async fn list(
        &self,
        bucket: &BucketRow,
        prefix: &str,
        delimiter: Option<&str>,
        after_hex: String,
        max: usize,
    ) -> ApiResult<Listing> {
        let prefix_hex = nuage_store::key_hex(prefix);
        let mut l = Listing::default();
        let mut cursor = after_hex;
        let mut count = 0usize;
        let mut rolled: Option<String> = None;
        loop {
            let want = (max - count + 1).clamp(2, 1001);
            let rows = self
                .store
                .object_list(&bucket.id, &prefix_hex, &cursor, want as i64)
                .await?;
            let n = rows.len();
            for r in rows {
                if rolled.as_deref().is_some_and(|cp| r.key.starts_with(cp)) {
                    continue;
                }
                if count == max {
                    l.truncated = true;
                    l.next = Some(cursor);
                    return Ok(l);
                }
                let common = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                    r.key
                        .get(prefix.len()..)
                        .and_then(|rest| rest.find(d))
                        .map(|i| r.key[..prefix.len() + i + d.len()].to_string())
                });
                match common {
                    Some(cp) => {
                        cursor = format!("{}g", nuage_store::key_hex(&cp));
                        l.prefixes.push(cp.clone());
                        rolled = Some(cp);
                    }
                    None => {
                        cursor = nuage_store::key_hex(&r.key);
                        l.objects.push(r);
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

#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<ObjectRow>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The cursor to continue from when truncated.
    pub next: Option<String>,
}

/// Opens metadata sealed by `Engine::seal_meta`.
/// Plaintext bytes `offset .. offset + len` of a sealed stream in memory.
fn decrypt_sealed(
    dek: &SecretKey,
    aad: &[u8],
    sealed: &[u8],
    size: u64,
    offset: u64,
    len: u64,
) -> std::io::Result<Bytes> {
    let truncated = || std::io::Error::other("the stored body is truncated");
    let header = sealed.get(..HEADER_LEN).ok_or_else(truncated)?;
    let parsed = stream::Header::parse(header).map_err(std::io::Error::other)?;
    let span = stream::chunk_span(size, parsed.chunk_size(), offset, len)
        .map_err(std::io::Error::other)?;
    let fetched = sealed
        .get(span.ciphertext.start as usize..span.ciphertext.end as usize)
        .ok_or_else(truncated)?;
    let plain = stream::decrypt_range(dek, aad, header, size, fetched, offset, len)
        .map_err(std::io::Error::other)?;
    Ok(Bytes::from(plain))
}

fn open_meta(dek: &SecretKey, bucket_id: &str, version_id: &str, sealed: &str) -> ApiResult<Meta> {
    let sealed = B64
        .decode(sealed)
        .map_err(|_| ApiError::internal("stored metadata is not base64"))?;
    let plain = aead::unwrap(dek, &meta_aad(bucket_id, version_id), &sealed)
        .map_err(|_| ApiError::internal("stored metadata does not open"))?;
    serde_json::from_slice(&plain)
        .map_err(|_| ApiError::internal("stored metadata does not decode"))
}

/// S3's composite checksum of a multipart object, when every part carries
/// one of the same algorithm.
fn composite_checksum(parts: &[&PartRow]) -> Option<checksum::Stored> {
    let mut algo = None;
    let mut values = Vec::with_capacity(parts.len());
    for p in parts {
        let (name, value) = p.checksum.as_deref()?.split_once(':')?;
        let a = checksum::Algo::parse(name)?;
        if algo.is_some_and(|x| x != a) {
            return None;
        }
        algo = Some(a);
        values.push(value.to_string());
    }
    match algo? {
        // S3 keeps CRC64NVME of the whole object, never composite.
        checksum::Algo::Crc64nvme => {
            let pieces: Vec<(String, u64)> = values
                .into_iter()
                .zip(parts)
                .map(|(v, p)| (v, u64::try_from(p.size).unwrap_or(0)))
                .collect();
            Some(checksum::Stored {
                algorithm: checksum::Algo::Crc64nvme,
                value: checksum::combine_crc64nvme(&pieces)?,
                parts: None,
            })
        }
        algo => Some(checksum::Stored {
            algorithm: algo,
            value: algo.composite(&values)?,
            parts: Some(u32::try_from(parts.len()).ok()?),
        }),
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}
