//! Bearer secrets: 256 random bits, shown once, stored as a SHA-256 hash.
//! A fast hash is right here (unlike passwords): the input has full entropy,
//! so there is nothing to brute-force, and lookup must be cheap.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every nuage token starts with this, so secret scanners can spot leaks.
pub const TOKEN_PREFIX: &str = "nuage_";

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// An S3 access key: an id (`NK` and 18 base32 characters, the shape AWS
/// tools expect) and a 40-character secret carrying 240 random bits.
pub fn new_access_key() -> (String, zeroize::Zeroizing<String>) {
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 58];
    OsRng.fill_bytes(&mut raw);
    let id: String = std::iter::once("NK".to_string())
        .chain(
            raw[..18]
                .iter()
                .map(|b| (B32[usize::from(b & 31)] as char).to_string()),
        )
        .collect();
    let secret: String = raw[18..]
        .iter()
        .map(|b| B64[usize::from(b & 63)] as char)
        .collect();
    raw.iter_mut().for_each(|b| *b = 0);
    (id, zeroize::Zeroizing::new(secret))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_256_random_bits_and_hash_stably() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        let body = a.strip_prefix(TOKEN_PREFIX).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(!hash_token(&a).contains(body));
    }
}
