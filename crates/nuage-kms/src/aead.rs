//! AES-256-GCM key wrapping with a key derived per message.
//!
//! Each wrap draws a 256-bit salt and derives a one-time key with
//! HKDF-SHA256 from the wrapping key, so no (key, nonce) pair is ever reused
//! however many messages one key wraps — nonce uniqueness by construction
//! rather than by counting. Associated data binds a ciphertext to its owner.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
const SALT_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Bytes a wrap adds to its plaintext.
pub const OVERHEAD: usize = SALT_LEN + TAG_LEN;

/// A 256-bit secret key, wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        SecretKey(k)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: [u8; KEY_LEN] = b.try_into().ok()?;
        Some(SecretKey(Zeroizing::new(arr)))
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// A key derived from two independent keys (HKDF-SHA256, `a` as salt,
/// `b` as input keying material, `info` naming the use): recovering it
/// takes both, which is how a client-held key is layered over a data key.
pub fn derive_from_both(a: &SecretKey, b: &SecretKey, info: &[u8]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(Some(a.expose()), b.expose());
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    let _ = hk.expand(info, okm.as_mut());
    SecretKey(okm)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decryption failed: wrong key, wrong owner or altered data")]
pub struct OpenError;

/// The AES-256-GCM key of one message, derived from `key` and its salt;
/// `None` only if the implementation refused a 32-byte key.
fn one_time_cipher(key: &SecretKey, salt: &[u8]) -> Option<LessSafeKey> {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.expose());
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(b"nuage aead v1", okm.as_mut());
    UnboundKey::new(&AES_256_GCM, okm.as_ref())
        .ok()
        .map(LessSafeKey::new)
}

/// The key is used once, so a fixed nonce is unique for it.
fn one_time_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// Encrypts `plaintext` under `key`, bound to `aad`: `salt ‖ ciphertext ‖ tag`.
/// Empty only if the AES-GCM implementation failed (plaintexts over
/// 64 GiB, which callers never pass); [`unwrap`] rejects that.
pub fn wrap(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let Some(cipher) = one_time_cipher(key, &salt) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&salt);
    out.extend_from_slice(plaintext);
    match cipher.seal_in_place_separate_tag(one_time_nonce(), Aad::from(aad), &mut out[SALT_LEN..])
    {
        Ok(tag) => out.extend_from_slice(tag.as_ref()),
        Err(_) => out.clear(),
    }
    out
}

/// Reverses [`wrap`]; fails if the key, the associated data or any byte differs.
pub fn unwrap(
    key: &SecretKey,
    aad: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if wrapped.len() < OVERHEAD {
        return Err(OpenError);
    }
    let (salt, sealed) = wrapped.split_at(SALT_LEN);
    let cipher = one_time_cipher(key, salt).ok_or(OpenError)?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = cipher
        .open_in_place(one_time_nonce(), Aad::from(aad), buf.as_mut_slice())
        .map_err(|_| OpenError)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Wraps a key; the result unwraps with [`unwrap_key`].
pub fn wrap_key(kek: &SecretKey, aad: &[u8], key: &SecretKey) -> Vec<u8> {
    wrap(kek, aad, key.expose())
}

pub fn unwrap_key(kek: &SecretKey, aad: &[u8], wrapped: &[u8]) -> Result<SecretKey, OpenError> {
    let pt = unwrap(kek, aad, wrapped)?;
    SecretKey::from_slice(&pt).ok_or(OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_round_trip_and_bind_owner() {
        let k = SecretKey::generate();
        let w = wrap(&k, b"project-a/obj-1", b"hello");
        assert_eq!(w.len(), 5 + OVERHEAD);
        assert_eq!(&unwrap(&k, b"project-a/obj-1", &w).unwrap()[..], b"hello");
        assert_eq!(unwrap(&k, b"project-a/obj-2", &w), Err(OpenError));
        assert_eq!(
            unwrap(&SecretKey::generate(), b"project-a/obj-1", &w),
            Err(OpenError)
        );
        let mut bad = w.clone();
        bad[40] ^= 1;
        assert_eq!(unwrap(&k, b"project-a/obj-1", &bad), Err(OpenError));
        assert_eq!(unwrap(&k, b"", &w[..10]), Err(OpenError));
    }

    /// Keys wrapped before aws-lc-rs (by RustCrypto's AES-GCM) and after
    /// share one format: `salt ‖ AES-256-GCM(HKDF(salt, key), zero nonce)`.
    #[test]
    fn wraps_are_plain_aes_gcm_under_the_derived_key() {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let k = SecretKey::generate();
        let w = wrap(&k, b"owner", b"secret bytes");
        let mut okm = [0u8; KEY_LEN];
        Hkdf::<Sha256>::new(Some(&w[..SALT_LEN]), k.expose())
            .expand(b"nuage aead v1", &mut okm)
            .unwrap();
        let other = aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(&okm));
        let nonce = aes_gcm::Nonce::from_slice(&[0u8; 12]);
        let payload = Payload {
            msg: &w[SALT_LEN..],
            aad: b"owner",
        };
        assert_eq!(other.decrypt(nonce, payload).unwrap(), b"secret bytes");
        let resealed = other
            .encrypt(
                nonce,
                Payload {
                    msg: b"older wrap",
                    aad: b"owner",
                },
            )
            .unwrap();
        let older = [&w[..SALT_LEN], &resealed[..]].concat();
        assert_eq!(&unwrap(&k, b"owner", &older).unwrap()[..], b"older wrap");
    }

    #[test]
    fn the_same_plaintext_never_wraps_the_same_way() {
        let k = SecretKey::generate();
        assert_ne!(wrap(&k, b"", b"same"), wrap(&k, b"", b"same"));
    }
}
