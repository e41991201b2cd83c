//! The spool of an upload.
//!
//! An uploaded disk image must be inspected and converted by QEMU's tools
//! before it becomes an encrypted image, and those tools need random
//! access to a file-like source. Writing the upload to a plain temporary
//! file would put a tenant's disk on our disk in clear, against the first
//! security invariant. So the body is sealed as it arrives, in the key
//! service's chunked stream format, under a key that lives only in this
//! process's memory; QEMU's tools then read it back through a read-only NBD
//! export on a private Unix socket, which decrypts only the chunks they
//! touch. A crash leaves a spool nobody can read, removed at the next start.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use nuage_kms::aead::SecretKey;
use nuage_kms::stream::{
    StreamDecryptor, StreamEncryptor, DEFAULT_CHUNK_SIZE, HEADER_LEN, TAG_LEN,
};
use tokio::io::AsyncWriteExt;

const AAD: &[u8] = b"nuage upload spool";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the upload is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("the upload is empty")]
    Empty,
    #[error("spool I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("spool encryption failed: {0}")]
    Seal(String),
}

/// An upload, sealed in a file under a key only this value holds.
pub struct Spool {
    path: PathBuf,
    key: SecretKey,
    len: u64,
}

impl Spool {
    /// Seals `body` into `path` as it arrives, refusing more than `max`
    /// bytes; `progress` sees the running total.
    pub async fn receive<S, E>(
        path: PathBuf,
        mut body: S,
        max: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Spool, SpoolError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let key = SecretKey::generate();
        let (mut enc, header) = StreamEncryptor::new(&key, AAD, DEFAULT_CHUNK_SIZE)
            .map_err(|e| SpoolError::Seal(e.to_string()))?;
        let mut file = tokio::fs::File::create(&path).await?;
        let spool = Spool { path, key, len: 0 };
        // From here a failure removes the file (Drop).
        let mut spool = spool;
        file.write_all(&header).await?;
        let cs = DEFAULT_CHUNK_SIZE;
        let mut buf: Vec<u8> = Vec::with_capacity(2 * cs + TAG_LEN);
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| SpoolError::Body(e.to_string()))?;
            spool.len += piece.len() as u64;
            if spool.len > max {
                return Err(SpoolError::TooLarge(max));
            }
            buf.extend_from_slice(&piece);
            // Seal full chunks, always keeping at least one byte back: the
            // last chunk must be sealed as the last.
            while buf.len() > cs {
                let mut chunk: Vec<u8> = Vec::with_capacity(cs + TAG_LEN);
                chunk.extend_from_slice(&buf[..cs]);
                buf.drain(..cs);
                enc.encrypt_chunk(&mut chunk, false)
                    .map_err(|e| SpoolError::Seal(e.to_string()))?;
                file.write_all(&chunk).await?;
            }
            progress(spool.len);
        }
        if spool.len == 0 {
            return Err(SpoolError::Empty);
        }
        enc.encrypt_chunk(&mut buf, true)
            .map_err(|e| SpoolError::Seal(e.to_string()))?;
        file.write_all(&buf).await?;
        file.flush().await?;
        Ok(spool)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A reader of the plaintext with random access.
    pub fn reader(&self) -> io::Result<SpoolReader> {
        let file = std::fs::File::open(&self.path)?;
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        let dec = StreamDecryptor::new(&self.key, AAD, &header).map_err(io::Error::other)?;
        Ok(SpoolReader {
            file,
            dec: Arc::new(dec),
            len: self.len,
            pos: 0,
            chunk: None,
        })
    }

    /// Serves the plaintext read-only over NBD on a Unix socket in a new
    /// private (0700) directory under `run_dir`, until the export drops.
    pub fn export(&self, run_dir: &Path) -> io::Result<NbdExport> {
        let dir = run_dir.join(format!("nbd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let socket = dir.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let template = self.reader()?;
        let size = self.len;
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let Ok(conn) = conn.into_std() else { continue };
                let reader = template.clone_handle();
                tokio::task::spawn_blocking(move || serve(conn, reader, size));
            }
        });
        Ok(NbdExport { dir, socket, task })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: std::os::unix::net::UnixStream, reader: io::Result<SpoolReader>, size: u64) {
    let Ok(reader) = reader else { return };
    if conn.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(write) = conn.try_clone() else { return };
    let mut conn = Conn {
        read: io::BufReader::new(conn),
        write,
    };
    let export: nbd::Export<()> = nbd::Export {
        size,
        readonly: true,
        ..Default::default()
    };
    if nbd::server::handshake(&mut conn, |_name| Ok(export)).is_err() {
        return;
    }
    if let Err(e) = nbd::server::transmission(&mut conn, reader) {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            tracing::debug!(error = %e, "NBD export connection ended");
        }
    }
}

/// A Unix stream read through a buffer and written directly.
struct Conn {
    read: io::BufReader<std::os::unix::net::UnixStream>,
    write: std::os::unix::net::UnixStream,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write.flush()
    }
}

/// A live NBD export of a spool; dropping it stops serving and removes the
/// socket.
pub struct NbdExport {
    dir: PathBuf,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

/// The export name the `nbd` crate lists (it answers only
/// NBD_OPT_EXPORT_NAME, so QEMU checks the name against that list first).
const EXPORT_NAME: &str = "rustnbd";

impl NbdExport {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn name(&self) -> &str {
        EXPORT_NAME
    }

    /// The address QEMU's tools open.
    pub fn url(&self) -> String {
        format!("nbd+unix:///{EXPORT_NAME}?socket={}", self.socket.display())
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The plaintext of a spool, with random access; writes are refused.
pub struct SpoolReader {
    file: std::fs::File,
    dec: Arc<StreamDecryptor>,
    len: u64,
    pos: u64,
    /// The last chunk opened: its index and plaintext.
    chunk: Option<(u64, Vec<u8>)>,
}

impl SpoolReader {
    fn clone_handle(&self) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            file: self.file.try_clone()?,
            dec: self.dec.clone(),
            len: self.len,
            pos: 0,
            chunk: None,
        })
    }

    fn open_chunk(&mut self, index: u64) -> io::Result<&[u8]> {
        if self.chunk.as_ref().map(|c| c.0) != Some(index) {
            let cs = self.dec.chunk_size() as u64;
            let chunks = self.len.div_ceil(cs).max(1);
            let last = index + 1 == chunks;
            let plain = if last { self.len - index * cs } else { cs };
            let mut buf = vec![0u8; usize::try_from(plain).map_err(io::Error::other)? + TAG_LEN];
            let at = HEADER_LEN as u64 + index * (cs + TAG_LEN as u64);
            self.file.read_exact_at(&mut buf, at)?;
            self.dec
                .decrypt_chunk(index, &mut buf, last)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.chunk = Some((index, buf));
        }
        Ok(self.chunk.as_ref().map(|c| c.1.as_slice()).unwrap_or(&[]))
    }
}

impl Read for SpoolReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let cs = self.dec.chunk_size() as u64;
        let index = self.pos / cs;
        let offset = usize::try_from(self.pos % cs).map_err(io::Error::other)?;
        let chunk = self.open_chunk(index)?;
        let n = (chunk.len() - offset).min(out.len());
        out[..n].copy_from_slice(&chunk[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SpoolReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let next = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = next.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl Write for SpoolReader {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the upload spool is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
