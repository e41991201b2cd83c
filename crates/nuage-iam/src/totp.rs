//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step).

use nuage_core::{ApiError, ApiResult};
use totp_rs::{Algorithm, Secret, TOTP};

fn totp(secret_b32: &str) -> ApiResult<TOTP> {
    let bytes = Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|_| ApiError::internal("stored TOTP secret is not valid base32"))?;
    TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes)
        .map_err(|_| ApiError::internal("invalid TOTP secret"))
}

/// A new random base32 secret (160 bits).
pub fn new_secret() -> String {
    match Secret::generate_secret().to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => String::new(),
    }
}

/// The `otpauth://` URL authenticator apps import.
pub fn otpauth_url(secret_b32: &str, issuer: &str, account: &str) -> String {
    format!("otpauth://totp/{issuer}:{account}?secret={secret_b32}&issuer={issuer}&algorithm=SHA1&digits=6&period=30")
}

pub fn check(secret_b32: &str, code: &str, unix_secs: u64) -> ApiResult<bool> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(false);
    }
    Ok(totp(secret_b32)?.check(code, unix_secs))
}

/// The current code (used by tests and by `nuage` to help operators check
/// their clock).
pub fn current(secret_b32: &str, unix_secs: u64) -> ApiResult<String> {
    Ok(totp(secret_b32)?.generate(unix_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_check_within_one_step_only() {
        let s = new_secret();
        let t = 1_800_000_000;
        let code = current(&s, t).unwrap();
        assert!(check(&s, &code, t).unwrap());
        assert!(check(&s, &code, t + 30).unwrap());
        assert!(!check(&s, &code, t + 120).unwrap());
        assert!(!check(&s, "12345", t).unwrap());
        assert!(otpauth_url(&s, "nuage", "alice").contains(&s));
    }

    #[test]
    fn rfc6238_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s → 94287082 (8 digits); the
        // 6-digit code is its last six digits.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"
        assert_eq!(current(secret, 59).unwrap(), "287082");
    }
}
