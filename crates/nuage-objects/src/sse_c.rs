//! SSE-C: objects encrypted with a key the client sends with each request
//! and nuage never stores. It is layered over the platform's own
//! encryption, not instead of it: the body key is derived from both the
//! object's data key (wrapped by the project key) and the client's key, so
//! reading the object needs both. What is kept to recognise the right key
//! is a verifier derived from the data key and the client key — not the
//! client key, and nothing that opens the body without the data key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use md5::{Digest, Md5};
use nuage_core::{ApiError, ApiResult};
use nuage_kms::aead::{derive_from_both, SecretKey};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// A client's SSE-C key, checked against its MD5 as S3 requires.
#[derive(Clone)]
pub struct CustomerKey {
    key: SecretKey,
    md5: String,
}

/// What an SSE-C object keeps about its key (in its sealed metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SseC {
    /// Base64 MD5 of the key, echoed back as S3 does.
    pub key_md5: String,
    /// Base64 of a value derived from the data key and the client key.
    pub verifier: String,
}

fn bad(detail: &str) -> ApiError {
    ApiError::bad_request("invalid_sse_c", detail.to_string())
}

impl CustomerKey {
    /// Parses the three SSE-C headers (all or none).
    pub fn from_headers(
        algorithm: Option<&str>,
        key: Option<&str>,
        key_md5: Option<&str>,
    ) -> ApiResult<Option<CustomerKey>> {
        let (algorithm, key, key_md5) =
            match (algorithm, key, key_md5) {
                (None, None, None) => return Ok(None),
                (Some(a), Some(k), Some(m)) => (a, k, m),
                _ => return Err(bad(
                    "Requests specifying Server Side Encryption with Customer provided keys must \
                     provide the algorithm, the key and its MD5",
                )),
            };
        if algorithm != "AES256" {
            return Err(bad(
                "The encryption algorithm specified is not valid: only AES256",
            ));
        }
        let raw = B64
            .decode(key.trim())
            .map_err(|_| bad("The secret key was invalid for the specified algorithm."))?;
        let key = SecretKey::from_slice(&raw)
            .ok_or_else(|| bad("The secret key was invalid for the specified algorithm."))?;
        let md5 = B64.encode(Md5::digest(&raw));
        if md5 != key_md5.trim() {
            return Err(bad(
                "The calculated MD5 hash of the key did not match the hash that was provided.",
            ));
        }
        Ok(Some(CustomerKey { key, md5 }))
    }

    pub fn key_md5(&self) -> &str {
        &self.md5
    }

    /// The key a body (or part) is encrypted with.
    pub fn body_key(&self, dek: &SecretKey) -> SecretKey {
        derive_from_both(dek, &self.key, b"nuage sse-c body v1")
    }

    /// The record kept with an object encrypted under this key.
    pub fn record(&self, dek: &SecretKey) -> SseC {
        SseC {
            key_md5: self.md5.clone(),
            verifier: B64
                .encode(derive_from_both(dek, &self.key, b"nuage sse-c verifier v1").expose()),
        }
    }

    /// Whether this is the key `kept` was made with (constant time).
    pub fn matches(&self, dek: &SecretKey, kept: &SseC) -> bool {
        let mine = self.record(dek);
        bool::from(mine.verifier.as_bytes().ct_eq(kept.verifier.as_bytes()))
    }
}

/// Checks a request's SSE-C key against an object's: both or neither.
pub fn check(kept: Option<&SseC>, given: Option<&CustomerKey>, dek: &SecretKey) -> ApiResult<()> {
    match (kept, given) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(bad(
            "The object was stored using a form of Server Side Encryption. The correct \
             parameters must be provided to retrieve the object.",
        )),
        (None, Some(_)) => Err(bad(
            "The encryption parameters are not applicable to this object.",
        )),
        (Some(k), Some(g)) => {
            if g.matches(dek, k) {
                Ok(())
            } else {
                Err(ApiError::forbidden(
                    "The provided SSE-C key does not match the key the object was stored with",
                )
                .with_code("sse_c_key_mismatch"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> (String, String) {
        let raw = [b; 32];
        (B64.encode(raw), B64.encode(Md5::digest(raw)))
    }

    #[test]
    fn headers_and_matching() {
        let (k, m) = key(7);
        let ck = CustomerKey::from_headers(Some("AES256"), Some(&k), Some(&m))
            .unwrap()
            .unwrap();
        assert!(CustomerKey::from_headers(None, None, None)
            .unwrap()
            .is_none());
        assert!(CustomerKey::from_headers(Some("AES256"), Some(&k), None).is_err());
        assert!(CustomerKey::from_headers(Some("aws:kms"), Some(&k), Some(&m)).is_err());
        let (_, other_md5) = key(8);
        assert!(CustomerKey::from_headers(Some("AES256"), Some(&k), Some(&other_md5)).is_err());
        assert!(CustomerKey::from_headers(Some("AES256"), Some("c2hvcnQ="), Some(&m)).is_err());

        let dek = SecretKey::generate();
        let kept = ck.record(&dek);
        assert!(check(Some(&kept), Some(&ck), &dek).is_ok());
        let (k2, m2) = key(9);
        let wrong = CustomerKey::from_headers(Some("AES256"), Some(&k2), Some(&m2))
            .unwrap()
            .unwrap();
        assert_eq!(
            check(Some(&kept), Some(&wrong), &dek).unwrap_err().status,
            403
        );
        assert_eq!(check(Some(&kept), None, &dek).unwrap_err().status, 400);
        assert_eq!(check(None, Some(&ck), &dek).unwrap_err().status, 400);
        // The body key needs both keys.
        assert_ne!(ck.body_key(&dek).expose(), wrong.body_key(&dek).expose());
        assert_ne!(
            ck.body_key(&dek).expose(),
            ck.body_key(&SecretKey::generate()).expose()
        );
    }
}
