//! How long a signed S3 request stays good. `s3s` verifies signatures, and
//! the expiry of presigned URLs, but never looks at the date of a request
//! signed in headers: a captured request would replay forever. Like S3:
//!
//! - a request signed in headers (SigV4, aws-chunked bodies included, whose
//!   chunk signatures chain from the headers' one; or SigV2) must be dated
//!   within 15 minutes of our clock, else `RequestTimeTooSkewed` (403).
//!   Judged in the access check, once the signature is verified: the date
//!   judged is the one signed, and the audit entry names the key's holder;
//! - a presigned URL lives at most 7 days: an `X-Amz-Expires` over 604800
//!   is `AuthorizationQueryParametersError` (400), a negative one expired
//!   (`AccessDenied`, 403). Judged before `s3s` sees the request (it would
//!   answer a negative one `InvalidRequest`), like S3 judges its query
//!   parameters before the signature. `s3s` refuses expired URLs and URLs
//!   dated more than `presigned_url_max_skew_time_secs` ahead. A SigV2
//!   URL's `Expires` (a date) may be at most 7 days ahead either.
//!
//! POST forms are not judged here: `s3s` refuses a policy past its expiration.

use http::HeaderMap;
use s3s::{s3_error, S3Result};
use time::format_description::well_known::Rfc2822;
use time::{Duration, OffsetDateTime};

/// The largest difference between a request's date and our clock.
pub(super) const MAX_SKEW: Duration = Duration::minutes(15);

/// The longest life of a presigned URL, in seconds (7 days).
pub(super) const MAX_PRESIGNED_SECS: i64 = 604_800;

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `X-Amz-Expires` of a presigned SigV4 URL, before anything else.
pub(super) fn presigned_expiry(query: Option<&str>) -> S3Result<()> {
    let pairs = query_pairs(query);
    if param(&pairs, "X-Amz-Signature").is_none() {
        return Ok(());
    }
    // A missing one is the wire crate's to refuse.
    let Some(raw) = param(&pairs, "X-Amz-Expires") else {
        return Ok(());
    };
    match raw.parse::<i64>() {
        Err(_) => Err(s3_error!(
            AuthorizationQueryParametersError,
            "X-Amz-Expires should be a number"
        )),
        Ok(n) if n < 0 => Err(s3_error!(AccessDenied, "Request has expired")),
        Ok(n) if n > MAX_PRESIGNED_SECS => Err(s3_error!(
            AuthorizationQueryParametersError,
            "X-Amz-Expires must be less than a week (in seconds) that is; 604800"
        )),
        Ok(_) => Ok(()),
    }
}

/// A signed request's date or expiry against `now`, once its signature is
/// verified (not for POST forms).
pub(super) fn signed_in_time(
    headers: &HeaderMap,
    query: Option<&str>,
    now: OffsetDateTime,
) -> S3Result<()> {
    let pairs = query_pairs(query);
    // The wire crate's order: SigV2 in the query, then SigV4 in the query,
    // then the Authorization header.
    if param(&pairs, "Signature").is_some() {
        let expires = param(&pairs, "Expires").and_then(|e| e.parse::<i64>().ok());
        return match expires {
            Some(e) if e <= now.unix_timestamp().saturating_add(MAX_PRESIGNED_SECS) => Ok(()),
            _ => Err(s3_error!(
                AuthorizationQueryParametersError,
                "Expires must be less than a week (604800 seconds) in the future"
            )),
        };
    }
    if param(&pairs, "X-Amz-Signature").is_some() {
        return Ok(());
    }
    // x-amz-date, when present, is the signed date (SigV2 too); else Date.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let date = header("x-amz-date")
        .or_else(|| header("date"))
        .and_then(parse_date)
        .ok_or_else(|| {
            s3_error!(
                AccessDenied,
                "AWS authentication requires a valid Date or x-amz-date header"
            )
        })?;
    if (now - date).abs() > MAX_SKEW {
        return Err(s3_error!(
            RequestTimeTooSkewed,
            "The difference between the request time and the current time is too large."
        ));
    }
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` (SigV4) or an RFC 1123 date (`Date`, SigV2).
fn parse_date(s: &str) -> Option<OffsetDateTime> {
    iso_basic(s).or_else(|| OffsetDateTime::parse(s, &Rfc2822).ok())
}

fn iso_basic(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u16> {
        let d = b.get(r)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(d.iter().fold(0u16, |n, c| n * 10 + u16::from(c - b'0')))
    };
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let small = |r| num(r).and_then(|n| u8::try_from(n).ok());
    let date = time::Date::from_calendar_date(i32::from(num(0..4)?), month, small(6..8)?).ok()?;
    let t = date
        .with_hms(small(9..11)?, small(11..13)?, small(13..15)?)
        .ok()?;
    Some(t.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::S3ErrorCode;

    fn now() -> OffsetDateTime {
        // 2026-12-08T01:30:00Z
        OffsetDateTime::from_unix_timestamp(1_796_693_400).unwrap()
    }

    fn iso(t: OffsetDateTime) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn code(r: S3Result<()>) -> Option<S3ErrorCode> {
        r.err().map(|e| e.code().clone())
    }

    #[test]
    fn a_header_signature_is_good_for_fifteen_minutes_either_way() {
        let at = |d: Duration| {
            let h = headers(&[("x-amz-date", &iso(now() + d))]);
            code(signed_in_time(&h, None, now()))
        };
        for ok in [0, -10, 10, -15, 15] {
            assert_eq!(at(Duration::minutes(ok)), None, "{ok} minutes");
        }
        for late in [
            Duration::minutes(-20),
            Duration::minutes(20),
            Duration::seconds(-901),
            Duration::seconds(901),
        ] {
            assert_eq!(
                at(late),
                Some(S3ErrorCode::RequestTimeTooSkewed),
                "{late} away"
            );
        }
    }

    #[test]
    fn far_dates_are_skewed_and_nonsense_is_refused() {
        for d in ["19990101T000000Z", "00000101T000000Z", "99991231T235959Z"] {
            let h = headers(&[("x-amz-date", d)]);
            assert_eq!(
                code(signed_in_time(&h, None, now())),
                Some(S3ErrorCode::RequestTimeTooSkewed),
                "{d}"
            );
        }
        for d in [
            "20261308T013000Z",
            "20261208T256000Z",
            "20261232T013000Z",
            "2026120/T013000Z",
            "today",
        ] {
            let h = headers(&[("x-amz-date", d)]);
            assert_eq!(
                code(signed_in_time(&h, None, now())),
                Some(S3ErrorCode::AccessDenied),
                "{d}"
            );
        }
        // no date at all
        assert_eq!(
            code(signed_in_time(&HeaderMap::new(), None, now())),
            Some(S3ErrorCode::AccessDenied)
        );
    }

    #[test]
    fn sigv2_dates_are_judged_too() {
        let ok = headers(&[("date", "Tue, 08 Dec 2026 01:25:00 GMT")]);
        assert_eq!(code(signed_in_time(&ok, None, now())), None);
        let old = headers(&[("date", "Fri, 01 Jan 1999 00:00:00 +0000")]);
        assert_eq!(
            code(signed_in_time(&old, None, now())),
            Some(S3ErrorCode::RequestTimeTooSkewed)
        );
        // x-amz-date, when present, is the date signed
        let both = headers(&[
            ("date", "Tue, 08 Dec 2026 01:25:00 GMT"),
            ("x-amz-date", "Fri, 01 Jan 1999 00:00:00 GMT"),
        ]);
        assert_eq!(
            code(signed_in_time(&both, None, now())),
            Some(S3ErrorCode::RequestTimeTooSkewed)
        );
        // a presigned SigV2 URL: Expires at most 7 days ahead
        let t = now().unix_timestamp();
        let q = |exp: i64| format!("AWSAccessKeyId=AK&Expires={exp}&Signature=abc%3D");
        assert_eq!(
            code(signed_in_time(
                &HeaderMap::new(),
                Some(&q(t + MAX_PRESIGNED_SECS)),
                now()
            )),
            None
        );
        assert_eq!(
            code(signed_in_time(
                &HeaderMap::new(),
                Some(&q(t + MAX_PRESIGNED_SECS + 1)),
                now()
            )),
            Some(S3ErrorCode::AuthorizationQueryParametersError)
        );
    }

    #[test]
    fn presigned_urls_live_at_most_seven_days() {
        let q = |exp: &str| {
            format!(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261208%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20261208T013000Z&X-Amz-Expires={exp}&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
            )
        };
        assert_eq!(code(presigned_expiry(Some(&q("604800")))), None);
        assert_eq!(code(presigned_expiry(Some(&q("0")))), None);
        assert_eq!(
            code(presigned_expiry(Some(&q("604801")))),
            Some(S3ErrorCode::AuthorizationQueryParametersError)
        );
        assert_eq!(
            code(presigned_expiry(Some(&q("99999999999999999999")))),
            Some(S3ErrorCode::AuthorizationQueryParametersError)
        );
        assert_eq!(
            code(presigned_expiry(Some(&q("soon")))),
            Some(S3ErrorCode::AuthorizationQueryParametersError)
        );
        assert_eq!(
            code(presigned_expiry(Some(&q("-1")))),
            Some(S3ErrorCode::AccessDenied)
        );
        // not presigned: not judged here
        assert_eq!(code(presigned_expiry(Some("X-Amz-Expires=-1"))), None);
        assert_eq!(code(presigned_expiry(None)), None);
        // the URL's own date is s3s's to judge, not the headers'
        let h = headers(&[("x-amz-date", "19990101T000000Z")]);
        assert_eq!(code(signed_in_time(&h, Some(&q("3600")), now())), None);
    }
}
