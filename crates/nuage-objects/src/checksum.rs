//! S3's additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256).
//!
//! A body's checksum is computed while it streams in and compared with what
//! the client sent — in a header, or in the aws-chunked trailer that only
//! arrives after the last byte — before anything commits, so a corrupted
//! upload changes nothing. The value is kept in the object's sealed
//! metadata and returned when a client asks (`x-amz-checksum-mode`).
//! Objects sent without one get CRC64NVME, as S3 does today.
//!
//! The hashing itself is `s3s`'s (the wire crate), so what we check is
//! computed exactly as the protocol layer defines it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};
use s3s::TrailingHeaders;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algo {
    Crc32,
    Crc32c,
    Crc64nvme,
    Sha1,
    Sha256,
}

impl Algo {
    pub const ALL: [Algo; 5] = [
        Algo::Crc32,
        Algo::Crc32c,
        Algo::Crc64nvme,
        Algo::Sha1,
        Algo::Sha256,
    ];

    /// The algorithm named as S3 spells it (`CRC32`, `CRC64NVME`, …).
    pub fn parse(name: &str) -> Option<Algo> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "CRC32",
            Algo::Crc32c => "CRC32C",
            Algo::Crc64nvme => "CRC64NVME",
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
        }
    }

    /// The header (or trailer) carrying a value of this algorithm.
    pub fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Crc64nvme => "x-amz-checksum-crc64nvme",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Raw digest length, to refuse values that cannot be right.
    fn len(self) -> usize {
        match self {
            Algo::Crc32 | Algo::Crc32c => 4,
            Algo::Crc64nvme => 8,
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
        }
    }

    /// Whether `value` is the base64 of a digest of this algorithm.
    pub fn well_formed(self, value: &str) -> bool {
        B64.decode(value.trim())
            .is_ok_and(|raw| raw.len() == self.len())
    }

    pub fn hasher(self) -> Hasher {
        let mut h = ChecksumHasher::default();
        match self {
            Algo::Crc32 => h.crc32 = Some(Crc32::default()),
            Algo::Crc32c => h.crc32c = Some(Crc32c::default()),
            Algo::Crc64nvme => h.crc64nvme = Some(Crc64Nvme::default()),
            Algo::Sha1 => h.sha1 = Some(Sha1::default()),
            Algo::Sha256 => h.sha256 = Some(Sha256::default()),
        }
        Hasher(h, self)
    }

    /// The composite checksum of a multipart object: this algorithm over
    /// the parts' raw checksums, as S3 computes it (the caller appends `-N`).
    pub fn composite(self, parts: &[String]) -> Option<String> {
        let mut h = self.hasher();
        for p in parts {
            h.update(&B64.decode(p.trim()).ok()?);
        }
        Some(h.finish())
    }
}

/// The CRC of a whole body from the CRCs of its pieces (base64 values with
/// their lengths), for multipart objects of a full-object algorithm.
pub fn combine_crc64nvme(pieces: &[(String, u64)]) -> Option<String> {
    let mut acc: Option<u64> = None;
    for (value, len) in pieces {
        let raw: [u8; 8] = B64.decode(value.trim()).ok()?.try_into().ok()?;
        let crc = u64::from_be_bytes(raw);
        acc = Some(match acc {
            None => crc,
            Some(a) => crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, a, crc, *len),
        });
    }
    acc.map(|a| B64.encode(a.to_be_bytes()))
}

/// A running checksum of one algorithm.
pub struct Hasher(ChecksumHasher, Algo);

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The base64 digest.
    pub fn finish(self) -> String {
        let c = self.0.finalize();
        let v = match self.1 {
            Algo::Crc32 => c.checksum_crc32,
            Algo::Crc32c => c.checksum_crc32c,
            Algo::Crc64nvme => c.checksum_crc64nvme,
            Algo::Sha1 => c.checksum_sha1,
            Algo::Sha256 => c.checksum_sha256,
        };
        v.unwrap_or_default()
    }
}

/// The value a client claims for its body.
#[derive(Debug, Clone, Default)]
pub enum Expected {
    /// Nothing to check: the checksum is only computed and stored.
    #[default]
    None,
    /// Sent in a header, known before the body.
    Value(String),
    /// Announced by `x-amz-trailer`, read once the body has ended.
    Trailer(TrailingHeaders),
}

/// What a body is checked against while it is written.
#[derive(Debug, Clone)]
pub struct BodyCheck {
    /// Content-MD5, raw.
    pub md5: Option<Vec<u8>>,
    pub algo: Algo,
    pub expected: Expected,
}

impl Default for BodyCheck {
    fn default() -> Self {
        BodyCheck {
            md5: None,
            algo: Algo::Crc64nvme,
            expected: Expected::None,
        }
    }
}

/// Why a checksum check failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The value differs from the body's.
    Differs(Algo),
    /// A trailer was announced but never came, or is not a digest.
    MissingTrailer(Algo),
}

impl BodyCheck {
    /// Compares the computed `value` with the client's.
    pub fn verify(&self, value: &str) -> Result<(), Mismatch> {
        let claimed = match &self.expected {
            Expected::None => return Ok(()),
            Expected::Value(v) => v.trim().to_string(),
            Expected::Trailer(t) => t
                .read(|h| {
                    h.get(self.algo.header())
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.trim().to_string())
                })
                .flatten()
                .ok_or(Mismatch::MissingTrailer(self.algo))?,
        };
        if claimed == value {
            Ok(())
        } else {
            Err(Mismatch::Differs(self.algo))
        }
    }
}

/// A checksum kept with an object (or a part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub algorithm: Algo,
    pub value: String,
    /// Parts of a composite multipart checksum (absent: of the whole body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

impl Stored {
    /// The value as S3 returns it (`-N` for composite checksums).
    pub fn wire(&self) -> String {
        match self.parts {
            Some(n) => format!("{}-{n}", self.value),
            None => self.value.clone(),
        }
    }

    /// `x-amz-checksum-type`.
    pub fn kind(&self) -> &'static str {
        if self.parts.is_some() {
            "COMPOSITE"
        } else {
            "FULL_OBJECT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Values boto3 sends for b"hello world".
        let mut h = Algo::Crc32.hasher();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), "DUoRhQ==");
        let mut h = Algo::Sha256.hasher();
        h.update(b"hello world");
        assert_eq!(h.finish(), "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=");
    }

    #[test]
    fn crc64nvme_combines_to_the_whole_body() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sum = |b: &[u8]| {
            let mut h = Algo::Crc64nvme.hasher();
            h.update(b);
            h.finish()
        };
        let (a, b) = body.split_at(65_537);
        let combined = combine_crc64nvme(&[(sum(a), a.len() as u64), (sum(b), b.len() as u64)]);
        assert_eq!(combined, Some(sum(&body)));
    }

    #[test]
    fn parse_and_shape() {
        assert_eq!(Algo::parse("crc64nvme"), Some(Algo::Crc64nvme));
        assert_eq!(Algo::parse("md5"), None);
        assert!(Algo::Crc32.well_formed("DUoRhQ=="));
        assert!(!Algo::Crc32.well_formed("DUoRhQDUoRhQ"));
        assert!(!Algo::Sha1.well_formed("DUoRhQ=="));
    }

    #[test]
    fn verify_value() {
        let c = BodyCheck {
            md5: None,
            algo: Algo::Crc32,
            expected: Expected::Value("DUoRhQ==".into()),
        };
        assert_eq!(c.verify("DUoRhQ=="), Ok(()));
        assert_eq!(c.verify("AAAAAA=="), Err(Mismatch::Differs(Algo::Crc32)));
    }
}
