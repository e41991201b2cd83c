//! Chunked streaming AEAD: how every large blob (objects, backups, exports)
//! is encrypted under its per-resource DEK.
//!
//! A blob is cut into fixed-size chunks, each sealed with AES-256-GCM, so
//! that it can be encrypted and decrypted with bounded memory, read by
//! range without touching the other chunks, and still be checked as a
//! whole: the nonce of each chunk carries its index and whether it is the
//! last one (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
//! Vizár, as used by age and Tink), so reordered, dropped, duplicated or
//! foreign chunks fail authentication and a stream cut at a chunk boundary
//! is caught because its new last chunk was not sealed as final.
//!
//! As in age and Tink, each stream uses its own key derived from the DEK
//! and a random salt: one DEK may encrypt many streams (versions,
//! re-uploads), and a fresh key per stream keeps nonces unique without
//! relying on a 56-bit random prefix never repeating. The whole header
//! enters that derivation, so altering any header byte fails every chunk.
//!
//! # Byte format, version 1
//!
//! This is a public format: tenants decrypt their exports with it. Integers
//! are big-endian; `‖` is concatenation.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "NUAGESTR" (4E 55 41 47 45 53 54 52)
//!      8     1  format version, 0x01
//!      9     4  chunk size C, 4096 ..= 4194304 (default 65536)
//!     13    16  salt S, random per stream
//!     29     7  nonce prefix P, random per stream
//!     36     …  chunks 0 .. n-1
//! ```
//!
//! - Stream key: `K = HKDF-SHA256(salt = S, IKM = DEK, info = "nuage stream v1" ‖ header)`,
//!   32 bytes, where `header` is the 36 bytes above.
//! - A plaintext of `L` bytes has `n = max(1, ceil(L / C))` chunks. Every
//!   chunk but the last holds exactly `C` plaintext bytes; the last holds
//!   `1 ..= C`, or 0 only when `L = 0` (one empty final chunk).
//! - Chunk `i` (`0 ≤ i < 2^32`) is `AES-256-GCM(K, nonce, aad, plaintext_i)`
//!   stored as `ciphertext ‖ 16-byte tag`, with
//!   `nonce = P ‖ u32(i) ‖ f` (12 bytes; `f` = 0x01 for the last chunk,
//!   0x00 otherwise) and `aad` the caller's associated data (the owner:
//!   project, resource, version), bytes as given, the same for every chunk.
//! - Total length: `36 + L + 16·n`.
//!
//! Streaming decryption releases each chunk once it is authenticated; only
//! a successful end proves the stream was complete.

use std::io::{self, Read, Write};
use std::ops::Range;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::aead::{SecretKey, KEY_LEN};

pub const MAGIC: [u8; 8] = *b"NUAGESTR";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 36;
pub const TAG_LEN: usize = 16;
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;
pub const MIN_CHUNK_SIZE: usize = 4 * 1024;
pub const MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;
/// The chunk counter is 32 bits wide.
pub const MAX_CHUNKS: u64 = 1 << 32;

const SALT_LEN: usize = 16;
const PREFIX_LEN: usize = 7;
const KDF_INFO: &[u8] = b"nuage stream v1";
const FINAL: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("not a nuage stream: {0}")]
    BadHeader(&'static str),
    #[error("unsupported stream format version {0}")]
    UnsupportedVersion(u8),
    #[error("chunk size {0} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u64),
    #[error("chunk {0} failed authentication: wrong key, wrong owner, or altered, moved or foreign data")]
    Auth(u64),
    #[error("stream truncated")]
    Truncated,
    #[error("trailing data after the final chunk")]
    TrailingData,
    #[error("chunk {index} has an impossible length of {len} bytes")]
    ChunkLength { index: u64, len: usize },
    #[error("stream too long: at most 2^32 chunks")]
    TooLong,
    #[error("range {offset}+{len} outside a plaintext of {total} bytes")]
    Range { offset: u64, len: u64, total: u64 },
    #[error("stream already finished")]
    Finished,
    #[error("the AES-256-GCM implementation refused the stream key")]
    Key,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Io(e) => e,
            e @ (StreamError::ChunkSize(_) | StreamError::TooLong | StreamError::Finished) => {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            }
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

type Result<T, E = StreamError> = std::result::Result<T, E>;

fn check_chunk_size(chunk_size: usize) -> Result<()> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(StreamError::ChunkSize(chunk_size as u64))
    }
}

/// The parsed stream header.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    chunk_size: usize,
    salt: [u8; SALT_LEN],
    prefix: [u8; PREFIX_LEN],
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(StreamError::BadHeader("shorter than a header"))?;
        if h[..8] != MAGIC {
            return Err(StreamError::BadHeader("bad magic"));
        }
        if h[8] != VERSION {
            return Err(StreamError::UnsupportedVersion(h[8]));
        }
        let chunk_size = u32::from_be_bytes([h[9], h[10], h[11], h[12]]);
        let chunk_size =
            usize::try_from(chunk_size).map_err(|_| StreamError::ChunkSize(chunk_size.into()))?;
        check_chunk_size(chunk_size)?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&h[13..13 + SALT_LEN]);
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&h[13 + SALT_LEN..]);
        Ok(Header {
            chunk_size,
            salt,
            prefix,
        })
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8] = VERSION;
        // check_chunk_size bounds it to 4 MiB, far below u32::MAX.
        h[9..13].copy_from_slice(&(self.chunk_size as u32).to_be_bytes());
        h[13..13 + SALT_LEN].copy_from_slice(&self.salt);
        h[13 + SALT_LEN..].copy_from_slice(&self.prefix);
        h
    }
}

/// The per-stream AEAD: derived key, nonce prefix and associated data.
///
/// AES-GCM is aws-lc-rs's: it uses the CPU's vector AES and carry-less
/// multiply (VAES, VPCLMULQDQ) where present, about six times the
/// throughput of a portable implementation on the test machines, and AWS-LC
/// wipes the key schedule when the key is dropped.
struct ChunkCipher {
    aead: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
    aad: Vec<u8>,
}

impl ChunkCipher {
    fn new(dek: &SecretKey, aad: &[u8], header: &Header) -> Result<Self> {
        let bytes = header.to_bytes();
        let hk = Hkdf::<Sha256>::new(Some(&header.salt), dek.expose());
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        let _ = hk.expand_multi_info(&[KDF_INFO, &bytes], key.as_mut());
        let key = UnboundKey::new(&AES_256_GCM, key.as_ref()).map_err(|_| StreamError::Key)?;
        Ok(ChunkCipher {
            aead: LessSafeKey::new(key),
            prefix: header.prefix,
            aad: aad.to_vec(),
        })
    }

    fn nonce(&self, index: u64, last: bool) -> Result<Nonce> {
        let counter = u32::try_from(index).map_err(|_| StreamError::TooLong)?;
        let mut n = [0u8; 12];
        n[..PREFIX_LEN].copy_from_slice(&self.prefix);
        n[PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
        n[11] = if last { FINAL } else { 0 };
        Ok(Nonce::assume_unique_for_key(n))
    }

    fn seal(&self, index: u64, last: bool, chunk: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let nonce = self.nonce(index, last)?;
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce, Aad::from(&self.aad), chunk)
            .map_err(|_| StreamError::ChunkLength {
                index,
                len: chunk.len(),
            })?;
        tag.as_ref()
            .try_into()
            .map_err(|_| StreamError::ChunkLength {
                index,
                len: chunk.len(),
            })
    }

    /// Decrypts `ciphertext` into `out` (of the same length). A chunk that
    /// authenticates only with the other final flag is reported as
    /// truncation or trailing data; `ciphertext` is still intact for that
    /// second try because the opening is out of place (AWS-LC clears the
    /// output of a failed opening).
    fn open(
        &self,
        index: u64,
        last: bool,
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        if tag.len() != TAG_LEN {
            return Err(StreamError::Truncated);
        }
        let aad = || Aad::from(&self.aad);
        if self
            .aead
            .open_separate_gather(self.nonce(index, last)?, aad(), ciphertext, tag, out)
            .is_ok()
        {
            return Ok(());
        }
        if self
            .aead
            .open_separate_gather(self.nonce(index, !last)?, aad(), ciphertext, tag, out)
            .is_ok()
        {
            out.fill(0);
            return Err(if last {
                StreamError::Truncated
            } else {
                StreamError::TrailingData
            });
        }
        Err(StreamError::Auth(index))
    }
}

/// Number of chunks of a plaintext of `len` bytes.
fn chunk_count(len: u64, chunk_size: usize) -> u64 {
    len.div_ceil(chunk_size as u64).max(1)
}

/// Total stream length (header included) for a plaintext of `plaintext_len` bytes.
pub fn ciphertext_len(plaintext_len: u64, chunk_size: usize) -> Result<u64> {
    check_chunk_size(chunk_size)?;
    let n = chunk_count(plaintext_len, chunk_size);
    if n > MAX_CHUNKS {
        return Err(StreamError::TooLong);
    }
    plaintext_len
        .checked_add(HEADER_LEN as u64 + n * TAG_LEN as u64)
        .ok_or(StreamError::TooLong)
}

/// Plaintext length of a whole stream of `ciphertext_len` bytes (header
/// included); rejects lengths no stream can have.
pub fn plaintext_len(ciphertext_len: u64, chunk_size: usize) -> Result<u64> {
    check_chunk_size(chunk_size)?;
    let body = ciphertext_len.saturating_sub(HEADER_LEN as u64);
    if body < TAG_LEN as u64 {
        return Err(StreamError::Truncated);
    }
    let full = (chunk_size + TAG_LEN) as u64;
    let n = body.div_ceil(full);
    if n > MAX_CHUNKS {
        return Err(StreamError::TooLong);
    }
    let last = body - (n - 1) * full;
    if last < TAG_LEN as u64 {
        return Err(StreamError::Truncated);
    }
    if last == TAG_LEN as u64 && n > 1 {
        return Err(StreamError::TrailingData);
    }
    Ok(body - n * TAG_LEN as u64)
}

/// Seals a stream chunk by chunk.
pub struct StreamEncryptor {
    cipher: ChunkCipher,
    chunk_size: usize,
    next: u64,
    finished: bool,
}

impl StreamEncryptor {
    /// Starts a stream with a fresh salt and nonce prefix; the returned
    /// header must precede the chunks.
    pub fn new(dek: &SecretKey, aad: &[u8], chunk_size: usize) -> Result<(Self, [u8; HEADER_LEN])> {
        check_chunk_size(chunk_size)?;
        let mut salt = [0u8; SALT_LEN];
        let mut prefix = [0u8; PREFIX_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut salt)
            .map_err(io::Error::other)?;
        rand::rngs::OsRng
            .try_fill_bytes(&mut prefix)
            .map_err(io::Error::other)?;
        let header = Header {
            chunk_size,
            salt,
            prefix,
        };
        let enc = StreamEncryptor {
            cipher: ChunkCipher::new(dek, aad, &header)?,
            chunk_size,
            next: 0,
            finished: false,
        };
        Ok((enc, header.to_bytes()))
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Encrypts the next chunk in place and appends its tag (reserve
    /// `chunk_size + TAG_LEN` to avoid a reallocation). Every chunk but the
    /// last must hold exactly `chunk_size` bytes; the last holds 1 ..=
    /// `chunk_size`, or none if it is the only one — so a writer that does
    /// not know the length in advance must look one byte ahead.
    pub fn encrypt_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        let tag = self.seal_next(buf, last)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    fn seal_next(&mut self, chunk: &mut [u8], last: bool) -> Result<[u8; TAG_LEN]> {
        let index = self.next;
        let len = chunk.len();
        if self.finished {
            return Err(StreamError::Finished);
        }
        let fits = if last {
            len <= self.chunk_size && (len > 0 || index == 0)
        } else {
            len == self.chunk_size
        };
        if !fits {
            return Err(StreamError::ChunkLength { index, len });
        }
        let tag = self.cipher.seal(index, last, chunk)?;
        self.next += 1;
        self.finished = last;
        Ok(tag)
    }
}

/// Encrypts a whole plaintext held in memory.
pub fn encrypt_all(
    dek: &SecretKey,
    aad: &[u8],
    plaintext: &[u8],
    chunk_size: usize,
) -> Result<Vec<u8>> {
    let total = ciphertext_len(plaintext.len() as u64, chunk_size)?;
    let (mut enc, header) = StreamEncryptor::new(dek, aad, chunk_size)?;
    let mut out = Vec::with_capacity(usize::try_from(total).map_err(|_| StreamError::TooLong)?);
    out.extend_from_slice(&header);
    let n = chunk_count(plaintext.len() as u64, chunk_size);
    let mut chunks = plaintext.chunks(chunk_size);
    for i in 0..n {
        let start = out.len();
        out.extend_from_slice(chunks.next().unwrap_or_default());
        let tag = enc.seal_next(&mut out[start..], i + 1 == n)?;
        out.extend_from_slice(&tag);
    }
    Ok(out)
}

/// Reads until `buf` holds `want` bytes or the reader ends.
fn fill<R: Read>(reader: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    let missing = want.saturating_sub(buf.len()) as u64;
    reader.take(missing).read_to_end(buf)?;
    Ok(())
}

/// Reads one byte, `None` at the end.
fn peek<R: Read>(reader: &mut R) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match reader.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Encrypts everything `reader` yields into `writer` with one chunk of
/// memory; returns the plaintext length (record it: ranged reads need it).
pub fn encrypt_stream<R: Read, W: Write>(
    dek: &SecretKey,
    aad: &[u8],
    chunk_size: usize,
    mut reader: R,
    mut writer: W,
) -> io::Result<u64> {
    let (mut enc, header) = StreamEncryptor::new(dek, aad, chunk_size)?;
    writer.write_all(&header)?;
    let mut buf = Vec::with_capacity(chunk_size + TAG_LEN);
    let mut carry = None;
    let mut total = 0u64;
    loop {
        buf.clear();
        buf.extend(carry.take());
        fill(&mut reader, &mut buf, chunk_size)?;
        let last = buf.len() < chunk_size || {
            carry = peek(&mut reader)?;
            carry.is_none()
        };
        total += buf.len() as u64;
        enc.encrypt_chunk(&mut buf, last)?;
        writer.write_all(&buf)?;
        if last {
            return Ok(total);
        }
    }
}

/// Opens the chunks of one stream, in any order.
pub struct StreamDecryptor {
    cipher: ChunkCipher,
    chunk_size: usize,
}

impl StreamDecryptor {
    /// Reads the header from the first [`HEADER_LEN`] bytes of `header`.
    pub fn new(dek: &SecretKey, aad: &[u8], header: &[u8]) -> Result<Self> {
        let header = Header::parse(header)?;
        Ok(StreamDecryptor {
            cipher: ChunkCipher::new(dek, aad, &header)?,
            chunk_size: header.chunk_size,
        })
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Replaces chunk `index` (`ciphertext ‖ tag`) by its plaintext; `last`
    /// says whether it ends the stream. On error `buf` is unspecified.
    /// Costs a copy of the chunk over [`StreamDecryptor::decrypt_chunk_into`].
    pub fn decrypt_chunk(&self, index: u64, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        let len = buf.len();
        if len < TAG_LEN {
            return Err(StreamError::Truncated);
        }
        if last && index > 0 && len == TAG_LEN {
            return Err(StreamError::TrailingData);
        }
        if len > self.chunk_size + TAG_LEN || (!last && len != self.chunk_size + TAG_LEN) {
            return Err(StreamError::ChunkLength { index, len });
        }
        // The opening writes after the sealed chunk, then the plaintext
        // moves to the front: the caller's buffer is reused, not replaced.
        let plain = len - TAG_LEN;
        buf.resize(len + plain, 0);
        let (sealed, out) = buf.split_at_mut(len);
        let (ciphertext, tag) = sealed.split_at(plain);
        let r = self.cipher.open(index, last, ciphertext, tag, out);
        buf.copy_within(len.., 0);
        buf.truncate(plain);
        r
    }

    /// Decrypts chunk `index` from `chunk` (`ciphertext ‖ tag`), appending
    /// its plaintext to `out` (left as it was on error); `last` says
    /// whether it ends the stream.
    pub fn decrypt_chunk_into(
        &self,
        index: u64,
        chunk: &[u8],
        out: &mut Vec<u8>,
        last: bool,
    ) -> Result<()> {
        let split = chunk
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(StreamError::Truncated)?;
        let (ct, tag) = chunk.split_at(split);
        let start = out.len();
        out.resize(start + ct.len(), 0);
        let r = self.cipher.open(index, last, ct, tag, &mut out[start..]);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }
}

/// Decrypts a whole stream held in memory.
pub fn decrypt_all(dek: &SecretKey, aad: &[u8], stream: &[u8]) -> Result<Vec<u8>> {
    let dec = StreamDecryptor::new(dek, aad, stream)?;
    let len = plaintext_len(stream.len() as u64, dec.chunk_size)?;
    let mut out = Vec::with_capacity(usize::try_from(len).map_err(|_| StreamError::TooLong)?);
    let n = chunk_count(len, dec.chunk_size);
    for (i, chunk) in (0u64..).zip(stream[HEADER_LEN..].chunks(dec.chunk_size + TAG_LEN)) {
        dec.decrypt_chunk_into(i, chunk, &mut out, i + 1 == n)?;
    }
    Ok(out)
}

/// Decrypts a stream from `reader` into `writer` with one chunk of memory;
/// returns the plaintext length. What was written is only known complete
/// and authentic once this returns `Ok`.
pub fn decrypt_stream<R: Read, W: Write>(
    dek: &SecretKey,
    aad: &[u8],
    mut reader: R,
    mut writer: W,
) -> Result<u64> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::BadHeader("shorter than a header"),
        _ => e.into(),
    })?;
    let dec = StreamDecryptor::new(dek, aad, &header)?;
    let full = dec.chunk_size + TAG_LEN;
    let mut buf = Vec::with_capacity(full);
    let mut carry = None;
    let mut total = 0u64;
    for index in 0u64.. {
        buf.clear();
        buf.extend(carry.take());
        fill(&mut reader, &mut buf, full)?;
        let last = buf.len() < full || {
            carry = peek(&mut reader)?;
            carry.is_none()
        };
        dec.decrypt_chunk(index, &mut buf, last)?;
        writer.write_all(&buf)?;
        total += buf.len() as u64;
        if last {
            return Ok(total);
        }
    }
    Err(StreamError::TooLong)
}

/// What a ranged read of plaintext bytes `offset .. offset + len` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Bytes of the stored stream to fetch (offsets count the header);
    /// empty when `len` is 0.
    pub ciphertext: Range<u64>,
    /// Index of the first chunk fetched.
    pub first_chunk: u64,
    /// Number of chunks fetched.
    pub chunks: u64,
    /// Plaintext bytes to drop from the start of the first decrypted chunk.
    pub skip: u64,
    /// Plaintext bytes to keep after them.
    pub len: u64,
}

/// The chunks that hold plaintext bytes `offset .. offset + len` of a
/// stream of `plaintext_len` bytes; the range must lie within it.
pub fn chunk_span(plaintext_len: u64, chunk_size: usize, offset: u64, len: u64) -> Result<Span> {
    let total = ciphertext_len(plaintext_len, chunk_size)?;
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= plaintext_len)
        .ok_or(StreamError::Range {
            offset,
            len,
            total: plaintext_len,
        })?;
    let header = HEADER_LEN as u64;
    if len == 0 {
        return Ok(Span {
            ciphertext: header..header,
            first_chunk: 0,
            chunks: 0,
            skip: 0,
            len: 0,
        });
    }
    let cs = chunk_size as u64;
    let full = cs + TAG_LEN as u64;
    let first = offset / cs;
    let last = (end - 1) / cs;
    Ok(Span {
        ciphertext: header + first * full..(header + (last + 1) * full).min(total),
        first_chunk: first,
        chunks: last - first + 1,
        skip: offset - first * cs,
        len,
    })
}

/// Decrypts plaintext bytes `offset .. offset + len` from `fetched`, the
/// bytes of [`chunk_span`]'s `ciphertext` range, given the stream header and
/// the plaintext length of the whole stream (which tells which chunk is
/// final). Authenticates only the chunks it reads.
pub fn decrypt_range(
    dek: &SecretKey,
    aad: &[u8],
    header: &[u8],
    plaintext_len: u64,
    fetched: &[u8],
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let dec = StreamDecryptor::new(dek, aad, header)?;
    let cs = dec.chunk_size as u64;
    let span = chunk_span(plaintext_len, dec.chunk_size, offset, len)?;
    let want = span.ciphertext.end - span.ciphertext.start;
    match (fetched.len() as u64).cmp(&want) {
        std::cmp::Ordering::Less => return Err(StreamError::Truncated),
        std::cmp::Ordering::Greater => return Err(StreamError::TrailingData),
        std::cmp::Ordering::Equal => {}
    }
    let n = chunk_count(plaintext_len, dec.chunk_size);
    let end = offset + len;
    let mut out = Vec::with_capacity(usize::try_from(len).map_err(|_| StreamError::TooLong)?);
    let mut scratch = Vec::new();
    for (i, chunk) in (span.first_chunk..).zip(fetched.chunks(dec.chunk_size + TAG_LEN)) {
        let start = i * cs;
        let plain = chunk.len().saturating_sub(TAG_LEN) as u64;
        let from = offset.saturating_sub(start);
        let to = (end - start).min(plain);
        if from == 0 && to == plain {
            dec.decrypt_chunk_into(i, chunk, &mut out, i + 1 == n)?;
        } else {
            scratch.clear();
            dec.decrypt_chunk_into(i, chunk, &mut scratch, i + 1 == n)?;
            out.extend_from_slice(
                scratch
                    .get(from as usize..to as usize)
                    .ok_or(StreamError::Truncated)?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"project:p1/object:o1/v3";

    fn data(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::OsRng.fill_bytes(&mut v);
        v
    }

    fn sizes(cs: usize) -> Vec<usize> {
        vec![0, 1, cs - 1, cs, cs + 1, 3 * cs, 3 * cs + 17]
    }

    /// Yields at most 7 bytes a read, to exercise partial reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn stream(dek: &SecretKey, pt: &[u8], cs: usize) -> Vec<u8> {
        encrypt_all(dek, AAD, pt, cs).unwrap()
    }

    #[test]
    fn round_trips() {
        let dek = SecretKey::generate();
        for cs in [MIN_CHUNK_SIZE, DEFAULT_CHUNK_SIZE] {
            for size in sizes(cs) {
                let pt = data(size);
                let ct = stream(&dek, &pt, cs);
                assert_eq!(
                    ct.len() as u64,
                    ciphertext_len(size as u64, cs).unwrap(),
                    "size {size}"
                );
                assert_eq!(plaintext_len(ct.len() as u64, cs).unwrap(), size as u64);
                assert_eq!(decrypt_all(&dek, AAD, &ct).unwrap(), pt, "size {size}");

                let mut piped = Vec::new();
                let n = encrypt_stream(&dek, AAD, cs, Trickle(&pt), &mut piped).unwrap();
                assert_eq!(n, size as u64);
                assert_eq!(piped.len(), ct.len());
                assert_ne!(piped, ct, "fresh salt per stream");
                let mut back = Vec::new();
                assert_eq!(
                    decrypt_stream(&dek, AAD, Trickle(&piped), &mut back).unwrap(),
                    size as u64
                );
                assert_eq!(back, pt);
                assert_eq!(decrypt_all(&dek, AAD, &piped).unwrap(), pt);

                let (mut enc, header) = StreamEncryptor::new(&dek, AAD, cs).unwrap();
                let mut manual = header.to_vec();
                let mut chunks: Vec<&[u8]> = pt.chunks(cs).collect();
                if chunks.is_empty() {
                    chunks.push(&[]);
                }
                let mut buf = Vec::with_capacity(cs + TAG_LEN);
                for (i, c) in chunks.iter().enumerate() {
                    buf.clear();
                    buf.extend_from_slice(c);
                    enc.encrypt_chunk(&mut buf, i + 1 == chunks.len()).unwrap();
                    manual.extend_from_slice(&buf);
                }
                assert_eq!(decrypt_all(&dek, AAD, &manual).unwrap(), pt);
                let dec = StreamDecryptor::new(&dek, AAD, &manual).unwrap();
                let body = &manual[HEADER_LEN..];
                let count = body.chunks(cs + TAG_LEN).count();
                for (i, c) in body.chunks(cs + TAG_LEN).enumerate().rev() {
                    buf.clear();
                    buf.extend_from_slice(c);
                    dec.decrypt_chunk(i as u64, &mut buf, i + 1 == count)
                        .unwrap();
                    assert_eq!(buf, chunks[i]);
                }
            }
        }
    }

    /// Decrypts with nothing but HKDF and another AES-GCM implementation
    /// (RustCrypto's), as the module doc says.
    #[test]
    fn the_documented_format_is_the_real_one() {
        use aes_gcm::aead::{Aead, KeyInit};
        use aes_gcm::{Aes256Gcm, Key};
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        let pt = data(cs + 10);
        let ct = stream(&dek, &pt, cs);
        let h = &ct[..36];
        assert_eq!(&h[..8], b"NUAGESTR");
        assert_eq!(h[8], 1);
        assert_eq!(u32::from_be_bytes(h[9..13].try_into().unwrap()), cs as u32);
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&h[13..29]), dek.expose())
            .expand(&[b"nuage stream v1".as_slice(), h].concat(), &mut key)
            .unwrap();
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
        let mut out = Vec::new();
        for (i, c) in ct[36..].chunks(cs + 16).enumerate() {
            let mut nonce = h[29..36].to_vec();
            nonce.extend_from_slice(&(i as u32).to_be_bytes());
            nonce.push(u8::from(i == 1));
            let payload = aes_gcm::aead::Payload { msg: c, aad: AAD };
            out.extend(
                aead.decrypt(aes_gcm::Nonce::from_slice(&nonce), payload)
                    .unwrap(),
            );
        }
        assert_eq!(out, pt);
        assert_eq!(ct.len(), 36 + pt.len() + 2 * 16);
    }

    fn chunks_of(ct: &[u8], cs: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let chunks = ct[HEADER_LEN..]
            .chunks(cs + TAG_LEN)
            .map(<[u8]>::to_vec)
            .collect();
        (ct[..HEADER_LEN].to_vec(), chunks)
    }

    fn join(header: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut v = header.to_vec();
        for c in chunks {
            v.extend_from_slice(c);
        }
        v
    }

    fn both(dek: &SecretKey, aad: &[u8], ct: &[u8]) -> StreamError {
        let all = decrypt_all(dek, aad, ct).unwrap_err();
        let piped = decrypt_stream(dek, aad, Trickle(ct), io::sink()).unwrap_err();
        assert_eq!(format!("{all}"), format!("{piped}"));
        all
    }

    #[test]
    fn truncation_is_detected() {
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        for size in [3 * cs, 3 * cs + 5] {
            let ct = stream(&dek, &data(size), cs);
            for chunks in 1..=2 {
                let cut = HEADER_LEN + chunks * (cs + TAG_LEN);
                assert!(
                    matches!(both(&dek, AAD, &ct[..cut]), StreamError::Truncated),
                    "{size} {chunks}"
                );
            }
            for cut in [HEADER_LEN + cs + TAG_LEN + 3, HEADER_LEN + 15, HEADER_LEN] {
                assert!(
                    matches!(both(&dek, AAD, &ct[..cut]), StreamError::Truncated),
                    "{size} {cut}"
                );
            }
            let last = (ct.len() - HEADER_LEN - 1) / (cs + TAG_LEN);
            let err = both(&dek, AAD, &ct[..ct.len() - 1]);
            assert!(
                matches!(err, StreamError::Auth(i) if i as usize == last),
                "{err}"
            );
            assert!(matches!(
                both(&dek, AAD, &ct[..10]),
                StreamError::BadHeader(_)
            ));
        }
    }

    #[test]
    fn dropped_reordered_duplicated_and_appended_chunks_are_detected() {
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        let ct = stream(&dek, &data(3 * cs), cs);
        let (h, c) = chunks_of(&ct, cs);
        let auth = |v: Vec<Vec<u8>>| match both(&dek, AAD, &join(&h, &v)) {
            StreamError::Auth(i) => i,
            e => panic!("{e}"),
        };
        assert_eq!(auth(vec![c[0].clone(), c[2].clone()]), 1);
        assert_eq!(auth(vec![c[1].clone(), c[0].clone(), c[2].clone()]), 0);
        assert_eq!(auth(vec![c[0].clone(), c[0].clone(), c[2].clone()]), 1);
        assert_eq!(auth(vec![c[0].clone(), c[1].clone(), c[1].clone()]), 2);
        let appended = join(
            &h,
            &[c[0].clone(), c[1].clone(), c[2].clone(), c[2].clone()],
        );
        assert!(matches!(
            both(&dek, AAD, &appended),
            StreamError::TrailingData
        ));
        let mut empty_tail = ct.clone();
        empty_tail.extend_from_slice(&[0u8; TAG_LEN]);
        assert!(matches!(
            both(&dek, AAD, &empty_tail),
            StreamError::TrailingData
        ));
    }

    #[test]
    fn chunks_from_another_stream_or_owner_are_rejected() {
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        let pt = data(3 * cs);
        let (ha, a) = chunks_of(&stream(&dek, &pt, cs), cs);
        let (hb, b) = chunks_of(&stream(&dek, &pt, cs), cs);
        let mut mixed = a.clone();
        mixed[1] = b[1].clone();
        assert!(matches!(
            both(&dek, AAD, &join(&ha, &mixed)),
            StreamError::Auth(1)
        ));
        assert!(matches!(
            both(&dek, AAD, &join(&hb, &a)),
            StreamError::Auth(0)
        ));

        let ct = join(&ha, &a);
        assert!(matches!(
            both(&dek, b"project:p1/object:o2/v3", &ct),
            StreamError::Auth(0)
        ));
        assert!(matches!(
            both(&SecretKey::generate(), AAD, &ct),
            StreamError::Auth(0)
        ));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        for size in [0, 40, cs + 3] {
            let ct = stream(&dek, &data(size), cs);
            for bit in 0..ct.len() * 8 {
                let mut bad = ct.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decrypt_all(&dek, AAD, &bad).is_err(),
                    "size {size} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn headers_and_lengths_are_checked() {
        let dek = SecretKey::generate();
        let ct = stream(&dek, b"hello", MIN_CHUNK_SIZE);
        let mut bad = ct.clone();
        bad[0] = b'X';
        assert!(matches!(
            decrypt_all(&dek, AAD, &bad),
            Err(StreamError::BadHeader(_))
        ));
        let mut bad = ct.clone();
        bad[8] = 2;
        assert!(matches!(
            decrypt_all(&dek, AAD, &bad),
            Err(StreamError::UnsupportedVersion(2))
        ));
        let mut bad = ct.clone();
        bad[9..13].copy_from_slice(&(8u32 << 20).to_be_bytes());
        assert!(matches!(
            decrypt_all(&dek, AAD, &bad),
            Err(StreamError::ChunkSize(_))
        ));
        let mut bad = ct.clone();
        bad[9..13].copy_from_slice(&8192u32.to_be_bytes());
        assert!(matches!(
            decrypt_all(&dek, AAD, &bad),
            Err(StreamError::Auth(0))
        ));

        for cs in [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1] {
            assert!(matches!(
                StreamEncryptor::new(&dek, AAD, cs),
                Err(StreamError::ChunkSize(_))
            ));
            assert!(matches!(
                ciphertext_len(1, cs),
                Err(StreamError::ChunkSize(_))
            ));
        }
        assert!(StreamEncryptor::new(&dek, AAD, MAX_CHUNK_SIZE).is_ok());

        let cs = MIN_CHUNK_SIZE;
        let (h, full) = (HEADER_LEN as u64, (cs + TAG_LEN) as u64);
        assert_eq!(plaintext_len(h + 16, cs).unwrap(), 0);
        assert!(matches!(
            plaintext_len(h + 15, cs),
            Err(StreamError::Truncated)
        ));
        assert!(matches!(plaintext_len(3, cs), Err(StreamError::Truncated)));
        assert!(matches!(
            plaintext_len(h + full + 5, cs),
            Err(StreamError::Truncated)
        ));
        assert!(matches!(
            plaintext_len(h + full + 16, cs),
            Err(StreamError::TrailingData)
        ));
        assert_eq!(plaintext_len(h + full + 17, cs).unwrap(), cs as u64 + 1);
        for len in [0u64, 1, 4095, 4096, 4097, 1 << 20, (1 << 44) - 1] {
            assert_eq!(
                plaintext_len(ciphertext_len(len, cs).unwrap(), cs).unwrap(),
                len
            );
        }
        assert!(ciphertext_len(1 << 44, cs).is_ok());
        assert!(matches!(
            ciphertext_len((1 << 44) + 1, cs),
            Err(StreamError::TooLong)
        ));
        assert!(matches!(
            plaintext_len(u64::MAX, cs),
            Err(StreamError::TooLong)
        ));
    }

    #[test]
    fn encryptor_misuse_is_refused() {
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        let (mut enc, _) = StreamEncryptor::new(&dek, AAD, cs).unwrap();
        let mut short = vec![0u8; cs - 1];
        assert!(matches!(
            enc.encrypt_chunk(&mut short, false),
            Err(StreamError::ChunkLength { index: 0, .. })
        ));
        let mut big = vec![0u8; cs + 1];
        assert!(matches!(
            enc.encrypt_chunk(&mut big, true),
            Err(StreamError::ChunkLength { .. })
        ));
        let mut full = vec![0u8; cs];
        enc.encrypt_chunk(&mut full, false).unwrap();
        let mut empty = Vec::new();
        assert!(matches!(
            enc.encrypt_chunk(&mut empty, true),
            Err(StreamError::ChunkLength { index: 1, .. })
        ));
        let mut one = vec![1u8];
        enc.encrypt_chunk(&mut one, true).unwrap();
        let mut more = vec![1u8];
        assert!(matches!(
            enc.encrypt_chunk(&mut more, true),
            Err(StreamError::Finished)
        ));
    }

    #[test]
    fn ranged_reads_match_the_plaintext() {
        let dek = SecretKey::generate();
        for (cs, size) in [
            (MIN_CHUNK_SIZE, 3 * MIN_CHUNK_SIZE + 123),
            (MIN_CHUNK_SIZE, 2 * MIN_CHUNK_SIZE),
            (DEFAULT_CHUNK_SIZE, 2 * DEFAULT_CHUNK_SIZE + 9),
        ] {
            let pt = data(size);
            let ct = stream(&dek, &pt, cs);
            let total = size as u64;
            let mut points = vec![0, 1, size - 1, size];
            for k in 1..=size / cs {
                points.extend([k * cs - 1, k * cs, k * cs + 1]);
            }
            let mut lens = vec![0, 1, 2, 100, cs - 1, cs, cs + 1, 2 * cs + 5];
            lens.extend(points.iter().copied());
            for &off in &points {
                for len in lens.iter().copied().chain([size - off.min(size)]) {
                    if off + len > size {
                        continue;
                    }
                    let span = chunk_span(total, cs, off as u64, len as u64).unwrap();
                    let fetched = &ct[span.ciphertext.start as usize..span.ciphertext.end as usize];
                    let touched =
                        span.first_chunk as usize..(span.first_chunk + span.chunks) as usize;
                    let need: usize = touched.map(|i| (size - i * cs).min(cs) + TAG_LEN).sum();
                    assert_eq!(fetched.len(), need);
                    let got = decrypt_range(
                        &dek,
                        AAD,
                        &ct[..HEADER_LEN],
                        total,
                        fetched,
                        off as u64,
                        len as u64,
                    )
                    .unwrap();
                    assert_eq!(
                        got,
                        &pt[off..off + len],
                        "cs {cs} size {size} off {off} len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn ranged_reads_need_only_their_chunks() {
        let dek = SecretKey::generate();
        let cs = MIN_CHUNK_SIZE;
        let pt = data(4 * cs + 7);
        let ct = stream(&dek, &pt, cs);
        let total = pt.len() as u64;
        let (off, len) = (cs as u64 + 10, cs as u64);
        let span = chunk_span(total, cs, off, len).unwrap();
        assert_eq!(
            (span.first_chunk, span.chunks, span.skip, span.len),
            (1, 2, 10, len)
        );
        let r = span.ciphertext.start as usize..span.ciphertext.end as usize;
        assert_eq!(
            r,
            HEADER_LEN + cs + TAG_LEN..HEADER_LEN + 3 * (cs + TAG_LEN)
        );
        let mut fetched = ct[r.clone()].to_vec();
        let got = decrypt_range(&dek, AAD, &ct[..HEADER_LEN], total, &fetched, off, len).unwrap();
        assert_eq!(got, &pt[off as usize..(off + len) as usize]);

        assert!(matches!(
            decrypt_range(&dek, AAD, &ct, total, &fetched[1..], off, len),
            Err(StreamError::Truncated)
        ));
        fetched.push(0);
        assert!(matches!(
            decrypt_range(&dek, AAD, &ct, total, &fetched, off, len),
            Err(StreamError::TrailingData)
        ));
        fetched.pop();
        fetched[cs + TAG_LEN] ^= 1;
        assert!(matches!(
            decrypt_range(&dek, AAD, &ct, total, &fetched, off, len),
            Err(StreamError::Auth(2))
        ));
        let (a, b) = ct[HEADER_LEN..].split_at(cs + TAG_LEN);
        assert!(matches!(
            decrypt_range(&dek, AAD, &ct, total, &b[..cs + TAG_LEN], 0, 5),
            Err(StreamError::Auth(0))
        ));
        assert!(matches!(
            decrypt_range(&dek, b"other", &ct, total, a, 0, 5),
            Err(StreamError::Auth(0))
        ));
        assert!(matches!(
            chunk_span(total, cs, total, 1),
            Err(StreamError::Range { .. })
        ));
        assert!(matches!(
            chunk_span(total, cs, u64::MAX, 2),
            Err(StreamError::Range { .. })
        ));
        assert_eq!(
            decrypt_range(&dek, AAD, &ct, total, &[], total, 0).unwrap(),
            b""
        );

        // A stream cut at a chunk boundary, its length taken from what is stored.
        let cut = &ct[..HEADER_LEN + 2 * (cs + TAG_LEN)];
        let short = plaintext_len(cut.len() as u64, cs).unwrap();
        let span = chunk_span(short, cs, short - 1, 1).unwrap();
        let fetched = &cut[span.ciphertext.start as usize..];
        assert!(matches!(
            decrypt_range(&dek, AAD, &ct, short, fetched, short - 1, 1),
            Err(StreamError::Truncated)
        ));
        assert_eq!(
            decrypt_range(
                &dek,
                AAD,
                &ct,
                short,
                &cut[HEADER_LEN..HEADER_LEN + cs + TAG_LEN],
                0,
                3
            )
            .unwrap(),
            &pt[..3]
        );
    }
}
