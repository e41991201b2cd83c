//! Bucket settings that S3 clients manage (tags, CORS rules, public read),
//! kept as one JSON document in the bucket's row. Tags can reveal what a
//! bucket holds, so they are sealed under the platform key with the bucket
//! id as purpose (a sealed value copied to another bucket does not open).

use std::collections::BTreeMap;

use nuage_core::{ApiError, ApiResult};
use nuage_kms::Kms;
use nuage_store::BucketRow;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BucketSettings {
    /// Bucket tags, JSON sealed by [`Kms::seal_text`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_tags: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors: Vec<CorsRule>,
    /// Anonymous GET/HEAD of objects (and nothing else) is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_read: bool,
}

/// One CORS rule, as S3 defines it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CorsRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<i32>,
}

fn purpose(bucket_id: &str) -> String {
    format!("bucket tags {bucket_id}")
}

impl BucketSettings {
    pub fn of(b: &BucketRow) -> ApiResult<BucketSettings> {
        serde_json::from_str(&b.settings)
            .map_err(|e| ApiError::internal(format!("bucket settings do not decode: {e}")))
    }

    pub fn to_json(&self) -> ApiResult<String> {
        serde_json::to_string(self)
            .map_err(|e| ApiError::internal(format!("bucket settings do not encode: {e}")))
    }

    pub fn tags(&self, kms: &Kms, bucket_id: &str) -> ApiResult<BTreeMap<String, String>> {
        match &self.sealed_tags {
            None => Ok(BTreeMap::new()),
            Some(s) => {
                let plain = kms.open_text(&purpose(bucket_id), s)?;
                serde_json::from_str(&plain)
                    .map_err(|_| ApiError::internal("bucket tags do not decode"))
            }
        }
    }

    pub fn set_tags(
        &mut self,
        kms: &Kms,
        bucket_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> ApiResult<()> {
        self.sealed_tags = if tags.is_empty() {
            None
        } else {
            let json = serde_json::to_string(tags)
                .map_err(|_| ApiError::internal("bucket tags do not encode"))?;
            Some(kms.seal_text(&purpose(bucket_id), &json)?)
        };
        Ok(())
    }

    /// The first rule allowing `origin` to use `method` with `headers`
    /// (wildcards `*` as S3 allows them: one per origin or header).
    pub fn cors_match(&self, origin: &str, method: &str, headers: &[String]) -> Option<&CorsRule> {
        self.cors.iter().find(|r| {
            r.allowed_origins.iter().any(|o| wildcard(o, origin))
                && r.allowed_methods.iter().any(|m| m == method)
                && headers.iter().all(|h| {
                    r.allowed_headers
                        .iter()
                        .any(|a| wildcard(&a.to_ascii_lowercase(), &h.to_ascii_lowercase()))
                })
        })
    }
}

/// `pattern` with at most one `*` matching any run of characters.
fn wildcard(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, post)) => {
            s.len() >= pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_rules_match_like_s3() {
        let s = BucketSettings {
            cors: vec![CorsRule {
                allowed_origins: vec!["https://*.example.com".into()],
                allowed_methods: vec!["GET".into(), "PUT".into()],
                allowed_headers: vec!["x-amz-*".into(), "content-type".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(s
            .cors_match("https://app.example.com", "GET", &[])
            .is_some());
        assert!(s
            .cors_match(
                "https://app.example.com",
                "PUT",
                &["Content-Type".into(), "x-amz-date".into()]
            )
            .is_some());
        assert!(s
            .cors_match("https://app.example.com", "DELETE", &[])
            .is_none());
        assert!(s.cors_match("https://example.org", "GET", &[]).is_none());
        assert!(s
            .cors_match("https://app.example.com", "PUT", &["authorization".into()])
            .is_none());
        assert!(wildcard("*", "anything"));
        assert!(!wildcard("ab*ba", "aba"));
    }

    #[test]
    fn defaults_encode_as_an_empty_document() {
        assert_eq!(BucketSettings::default().to_json().unwrap(), "{}");
    }
}
