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
//! Every version has its own data key from the key service, wrapped by the
//! bucket's project key; metadata is sealed under that same data key.

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
use nuage_store::{BucketRow, ObjectRow, Store};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Plaintext bytes decrypted per read of a GET (a multiple of the chunk size).
const READ_CHUNKS: u64 = 16;

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
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_object_size: u64,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_object_size: 5 * 1024 * 1024 * 1024,
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
        let fan = version_id
            .get(version_id.len().saturating_sub(2)..)
            .unwrap_or("00");
        self.dir.join("bodies").join(fan).join(version_id)
    }

    /// Removes what crashes left behind: temporary files, and bodies no
    /// version row refers to. Only files older than `before` are touched,
    /// so requests running meanwhile are safe.
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
        for fan in std::fs::read_dir(self.dir.join("bodies"))
            .map_err(io_err("gc"))?
            .flatten()
        {
            let Ok(files) = std::fs::read_dir(fan.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if old(&f.path())
                    && !self.store.object_version_exists(&name).await?
                    && std::fs::remove_file(f.path()).is_ok()
                {
                    orphans += 1;
                }
            }
        }
        Ok((temps, orphans))
    }

    /// Stores a new current version of `key` from `body`.
    pub async fn put<S, E>(
        &self,
        bucket: &BucketRow,
        key: &str,
        mut body: S,
        meta: &Meta,
        expect_md5: Option<&[u8]>,
        why: &Purpose,
    ) -> Result<(ObjectRow, KeyUse), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let version_id = format!("obv_{}", uuid::Uuid::now_v7().simple());
        let (dk, used) = self
            .kms
            .data_key(&bucket.project_id, &bucket.key_id, &version_id, why)
            .await?;
        let aad = body_aad(&bucket.id, &version_id);
        let tmp_path = self.dir.join("tmp").join(&version_id);
        let mut guard = TempFile(Some(tmp_path.clone()));
        let file = tokio::fs::File::create(&tmp_path)
            .await
            .map_err(io_err("create a temporary file"))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let (mut enc, header) =
            StreamEncryptor::new(&dk.key, &aad, DEFAULT_CHUNK_SIZE).map_err(stream_err)?;
        out.write_all(&header).await.map_err(io_err("write"))?;
        let cs = DEFAULT_CHUNK_SIZE;
        let mut buf: Vec<u8> = Vec::with_capacity(cs + TAG_LEN);
        let mut md5 = Md5::new();
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
        let md5 = md5.finalize();
        if expect_md5.is_some_and(|m| m != md5.as_slice()) {
            return Err(PutError::Body(BodyError::BadDigest));
        }
        let file = out.into_inner();
        file.sync_all().await.map_err(io_err("fsync"))?;
        drop(file);

        let final_path = self.body_path(&version_id);
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
        guard.0 = Some(final_path.clone());
        sync_dir(&parent)
            .await
            .map_err(io_err("fsync a directory"))?;

        let sealed_meta = serde_json::to_vec(meta)
            .map_err(|e| ApiError::internal(format!("metadata does not encode: {e}")))?;
        let row = ObjectRow {
            version_id: version_id.clone(),
            bucket_id: bucket.id.clone(),
            key: key.to_string(),
            size: i64::try_from(total).map_err(|_| PutError::Body(BodyError::TooLarge))?,
            etag: hex::encode(md5),
            data_key_id: dk.id.clone(),
            sealed_meta: B64.encode(aead::wrap(
                &dk.key,
                &meta_aad(&bucket.id, &version_id),
                &sealed_meta,
            )),
            created_at: now_ms(),
        };
        let replaced = match self.store.object_put(&row).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.kms.data_key_delete(&dk.id).await;
                return Err(e.into());
            }
        };
        guard.0 = None;
        if let Some(old) = replaced {
            self.discard(&old).await;
        }
        Ok((row, used))
    }

    /// Forgets a version that is no longer referenced: its body and its
    /// data key (crypto-shredding what might remain on disk).
    pub async fn discard(&self, old: &ObjectRow) {
        if let Err(e) = tokio::fs::remove_file(self.body_path(&old.version_id)).await {
            tracing::warn!(error = %e, version = %old.version_id, "old object body not removed");
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
        let (dek, used) = self
            .kms
            .unwrap(&bucket.project_id, &row.data_key_id, &row.version_id, why)
            .await?;
        let sealed = B64
            .decode(&row.sealed_meta)
            .map_err(|_| ApiError::internal("stored metadata is not base64"))?;
        let plain = aead::unwrap(&dek, &meta_aad(&bucket.id, &row.version_id), &sealed)
            .map_err(|_| ApiError::internal("stored metadata does not open"))?;
        let meta: Meta = serde_json::from_slice(&plain)
            .map_err(|_| ApiError::internal("stored metadata does not decode"))?;
        Ok(Some((Opened { row, meta, dek }, used)))
    }

    /// Plaintext bytes `offset .. offset + len` of an opened version,
    /// decrypting only the chunks they touch, a few chunks at a time.
    pub fn read(
        &self,
        o: &Opened,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        struct St {
            path: PathBuf,
            file: Option<tokio::fs::File>,
            header: Vec<u8>,
            chunk_size: u64,
            dek: SecretKey,
            aad: Vec<u8>,
            plain_len: u64,
            pos: u64,
            end: u64,
        }
        let st = St {
            path: self.body_path(&o.row.version_id),
            file: None,
            header: Vec::new(),
            chunk_size: 0,
            dek: o.dek.clone(),
            aad: body_aad(&o.row.bucket_id, &o.row.version_id),
            plain_len: u64::try_from(o.row.size).unwrap_or(0),
            pos: offset,
            end: offset.saturating_add(len),
        };
        futures::stream::try_unfold(st, |mut st| async move {
            if st.pos >= st.end {
                return Ok(None);
            }
            if st.file.is_none() {
                let mut f = tokio::fs::File::open(&st.path).await?;
                let mut h = vec![0u8; HEADER_LEN];
                f.read_exact(&mut h).await?;
                let parsed = stream::Header::parse(&h).map_err(std::io::Error::other)?;
                st.chunk_size = parsed.chunk_size() as u64;
                st.header = h;
                st.file = Some(f);
            }
            let window = st.chunk_size * READ_CHUNKS;
            let piece_end = st.end.min((st.pos / window + 1) * window);
            let piece_len = piece_end - st.pos;
            let span = stream::chunk_span(st.plain_len, st.chunk_size as usize, st.pos, piece_len)
                .map_err(std::io::Error::other)?;
            let mut fetched = vec![0u8; (span.ciphertext.end - span.ciphertext.start) as usize];
            let f = st
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("object body not open"))?;
            f.seek(std::io::SeekFrom::Start(span.ciphertext.start))
                .await?;
            f.read_exact(&mut fetched).await?;
            let plain = stream::decrypt_range(
                &st.dek,
                &st.aad,
                &st.header,
                st.plain_len,
                &fetched,
                st.pos,
                piece_len,
            )
            .map_err(std::io::Error::other)?;
            st.pos = piece_end;
            Ok(Some((Bytes::from(plain), st)))
        })
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

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}
