//! Password hashing with argon2id (OWASP parameters: 19 MiB, 2 passes).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use nuage_core::{ApiError, ApiResult};

pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 1024;

fn argon() -> ApiResult<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|_| ApiError::internal("invalid argon2 parameters"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Rejects passwords too short or too long, without echoing them.
pub fn check_strength(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(ApiError::bad_request(
            "weak_password",
            format!("passwords must have at least {MIN_LEN} characters"),
        ));
    }
    if password.len() > MAX_LEN {
        return Err(ApiError::bad_request(
            "invalid_password",
            format!("passwords must have at most {MAX_LEN} bytes"),
        ));
    }
    Ok(())
}

pub fn hash(password: &str) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| ApiError::internal("cannot hash password"))
}

/// Constant-time verification against a stored PHC string.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    argon()
        .map(|a| a.verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// A hash of a random password, verified against when the user does not
/// exist so that timing does not reveal which names exist.
pub fn decoy_hash() -> String {
    hash(&crate::secret::new_token()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let h1 = hash("correct horse battery").unwrap();
        let h2 = hash("correct horse battery").unwrap();
        assert!(h1.starts_with("$argon2id$"));
        assert_ne!(h1, h2);
        assert!(verify("correct horse battery", &h1));
        assert!(!verify("correct horse batterY", &h1));
        assert!(!verify("x", "not a hash"));
    }

    #[test]
    fn strength_rules() {
        assert_eq!(check_strength("short").unwrap_err().code, "weak_password");
        assert!(check_strength("twelve chars").is_ok());
    }
}
