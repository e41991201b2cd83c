//! What a request says about the body it sends or wants: HTTP
//! preconditions (RFC 9110 order, as S3 applies them) and the checksum a
//! client attaches to an upload.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::HeaderMap;
use s3s::dto::{ETagCondition, Timestamp};
use s3s::{s3_error, S3Result, TrailingHeaders};

use crate::checksum::{Algo, BodyCheck, Expected};

/// The four conditional headers of a read (or of a copy source).
#[derive(Default)]
pub(super) struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Proceed,
    /// 304 for GET and HEAD.
    NotModified,
    /// 412.
    Failed,
}

fn secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

impl Conditions<'_> {
    /// Judges the conditions against an object's ETag and last
    /// modification (milliseconds; HTTP dates have whole seconds).
    pub fn evaluate(&self, etag: &str, modified_ms: i64) -> Outcome {
        let modified = modified_ms.div_euclid(1000);
        match self.if_match {
            Some(c) if !matches(c, etag) => return Outcome::Failed,
            Some(_) => {}
            None => {
                if self.if_unmodified_since.is_some_and(|t| modified > secs(t)) {
                    return Outcome::Failed;
                }
            }
        }
        match self.if_none_match {
            Some(c) if matches(c, etag) => return Outcome::NotModified,
            Some(_) => {}
            None => {
                if self.if_modified_since.is_some_and(|t| modified <= secs(t)) {
                    return Outcome::NotModified;
                }
            }
        }
        Outcome::Proceed
    }

    /// For a read: 304 or 412 as S3 answers them.
    pub fn check_read(&self, etag: &str, modified_ms: i64) -> S3Result<()> {
        match self.evaluate(etag, modified_ms) {
            Outcome::Proceed => Ok(()),
            Outcome::NotModified => Err(s3_error!(NotModified)),
            Outcome::Failed => Err(s3_error!(PreconditionFailed)),
        }
    }

    /// For a copy source, every failed condition is 412.
    pub fn check_source(&self, etag: &str, modified_ms: i64) -> S3Result<()> {
        match self.evaluate(etag, modified_ms) {
            Outcome::Proceed => Ok(()),
            _ => Err(s3_error!(
                PreconditionFailed,
                "a x-amz-copy-source-if-* condition does not hold"
            )),
        }
    }
}

/// The checksum values a request may carry in headers, by algorithm.
pub(super) struct Claimed<'a> {
    pub algorithm: Option<&'a str>,
    pub crc32: Option<&'a String>,
    pub crc32c: Option<&'a String>,
    pub crc64nvme: Option<&'a String>,
    pub sha1: Option<&'a String>,
    pub sha256: Option<&'a String>,
}

/// What the body of an upload is checked against: Content-MD5, and one
/// additional checksum — sent in a header, announced as an aws-chunked
/// trailer, only named (`x-amz-sdk-checksum-algorithm`: computed and
/// kept), or none (CRC64NVME is computed and kept, as S3 does).
pub(super) fn body_check(
    content_md5: Option<&str>,
    claimed: Claimed<'_>,
    headers: &HeaderMap,
    trailers: Option<&TrailingHeaders>,
) -> S3Result<BodyCheck> {
    let md5 = match content_md5 {
        Some(m) => Some(B64.decode(m.trim()).map_err(|_| s3_error!(InvalidDigest))?),
        None => None,
    };
    let values = [
        (Algo::Crc32, claimed.crc32),
        (Algo::Crc32c, claimed.crc32c),
        (Algo::Crc64nvme, claimed.crc64nvme),
        (Algo::Sha1, claimed.sha1),
        (Algo::Sha256, claimed.sha256),
    ];
    let mut sent = values
        .iter()
        .filter_map(|(a, v)| v.map(|v| (*a, v.to_string())));
    let first = sent.next();
    if sent.next().is_some() {
        return Err(s3_error!(
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        ));
    }
    let named = match claimed.algorithm {
        Some(n) => Some(Algo::parse(n).ok_or_else(|| {
            s3_error!(
                InvalidRequest,
                "Value for x-amz-sdk-checksum-algorithm header is invalid."
            )
        })?),
        None => None,
    };
    let trailer = headers
        .get("x-amz-trailer")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let (algo, expected) = match (first, trailer) {
        (Some((a, v)), _) => {
            if !a.well_formed(&v) {
                return Err(s3_error!(
                    InvalidRequest,
                    "Value for {} header is invalid.",
                    a.header()
                ));
            }
            (a, Expected::Value(v))
        }
        (None, Some(t)) => {
            let a = Algo::ALL
                .into_iter()
                .find(|a| a.header() == t)
                .ok_or_else(|| s3_error!(InvalidRequest, "unsupported x-amz-trailer {t:?}"))?;
            let t = trailers
                .cloned()
                .ok_or_else(|| s3_error!(InvalidRequest, "x-amz-trailer without a trailer"))?;
            (a, Expected::Trailer(t))
        }
        (None, None) => (named.unwrap_or(Algo::Crc64nvme), Expected::None),
    };
    if named.is_some_and(|n| n != algo) {
        return Err(s3_error!(
            InvalidRequest,
            "x-amz-sdk-checksum-algorithm names another algorithm than the checksum sent"
        ));
    }
    Ok(BodyCheck {
        md5,
        algo,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;
    use std::time::{Duration, SystemTime};

    fn ts(secs: u64) -> Timestamp {
        Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn rfc_order() {
        let tag = ETagCondition::ETag(ETag::Strong("abc".into()));
        let other = ETagCondition::ETag(ETag::Strong("zzz".into()));
        let (early, late, same) = (ts(1_000), ts(3_000), ts(2_000));
        let at = 2_000_500; // ms
        let c = |m, n, ms, us| Conditions {
            if_match: m,
            if_none_match: n,
            if_modified_since: ms,
            if_unmodified_since: us,
        };
        assert_eq!(
            c(None, None, None, None).evaluate("abc", at),
            Outcome::Proceed
        );
        assert_eq!(
            c(Some(&other), None, None, None).evaluate("abc", at),
            Outcome::Failed
        );
        // If-Match holding overrides a failing If-Unmodified-Since.
        assert_eq!(
            c(Some(&tag), None, None, Some(&early)).evaluate("abc", at),
            Outcome::Proceed
        );
        assert_eq!(
            c(None, None, None, Some(&early)).evaluate("abc", at),
            Outcome::Failed
        );
        assert_eq!(
            c(None, None, None, Some(&late)).evaluate("abc", at),
            Outcome::Proceed
        );
        assert_eq!(
            c(None, Some(&tag), None, None).evaluate("abc", at),
            Outcome::NotModified
        );
        // If-None-Match not matching overrides If-Modified-Since.
        assert_eq!(
            c(None, Some(&other), Some(&late), None).evaluate("abc", at),
            Outcome::Proceed
        );
        assert_eq!(
            c(None, None, Some(&late), None).evaluate("abc", at),
            Outcome::NotModified
        );
        assert_eq!(
            c(None, None, Some(&early), None).evaluate("abc", at),
            Outcome::Proceed
        );
        // Same second as the date: not modified since.
        assert_eq!(
            c(None, None, Some(&same), None).evaluate("abc", at),
            Outcome::NotModified
        );
        assert_eq!(
            c(None, Some(&ETagCondition::Any), None, None).evaluate("abc", at),
            Outcome::NotModified
        );
    }

    #[test]
    fn checksum_headers() {
        let none = Claimed {
            algorithm: None,
            crc32: None,
            crc32c: None,
            crc64nvme: None,
            sha1: None,
            sha256: None,
        };
        let h = HeaderMap::new();
        let c = body_check(None, none, &h, None).unwrap();
        assert_eq!(c.algo, Algo::Crc64nvme);
        let v = "DUoRhQ==".to_string();
        let bad = "nope".to_string();
        let one = Claimed {
            crc32: Some(&v),
            ..claimed_none()
        };
        assert_eq!(body_check(None, one, &h, None).unwrap().algo, Algo::Crc32);
        let two = Claimed {
            crc32: Some(&v),
            crc32c: Some(&v),
            ..claimed_none()
        };
        assert!(body_check(None, two, &h, None).is_err());
        let malformed = Claimed {
            sha1: Some(&bad),
            ..claimed_none()
        };
        assert!(body_check(None, malformed, &h, None).is_err());
        let mut t = HeaderMap::new();
        t.insert("x-amz-trailer", "x-amz-checksum-crc32c".parse().unwrap());
        // A trailer announced, but no trailer stream.
        assert!(body_check(None, claimed_none(), &t, None).is_err());
        assert!(body_check(Some("%%%"), claimed_none(), &h, None).is_err());
    }

    fn claimed_none() -> Claimed<'static> {
        Claimed {
            algorithm: None,
            crc32: None,
            crc32c: None,
            crc64nvme: None,
            sha1: None,
            sha256: None,
        }
    }
}
