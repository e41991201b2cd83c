//! What tenants hand the key service to decrypt: the envelope of the
//! encrypt endpoint (NKE1), sealed secrets (NKS1), and the AES-GCM wraps
//! inside them. Framing must split or refuse, never panic or read past the
//! input, and a wrap that was not made under the key must not open.
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use libfuzzer_sys::fuzz_target;
use nuage_kms::aead::{self, SecretKey};
use nuage_kms::service::{parse_envelope, parse_sealed};

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_slice(&[9u8; 32]).expect("32 bytes");
    if let Ok(e) = parse_envelope(data) {
        let framing = 4 + 2 + e.key_id.len() + 4 + 2 + e.wrapped.len();
        assert_eq!(framing + e.sealed.len(), data.len());
        assert!(aead::unwrap_key(&key, b"kek", e.wrapped).is_err());
        assert!(aead::unwrap(&key, b"aad", e.sealed).is_err());
    }
    if let Some((id, body)) = parse_sealed(data) {
        assert_eq!(4 + 1 + id.len() + body.len(), data.len());
        assert!(aead::unwrap(&key, b"owner", body).is_err());
    }
    // A genuine wrap of the input opens to it, and only with its own aad.
    let wrapped = aead::wrap(&key, b"aad", data);
    assert_eq!(
        aead::unwrap(&key, b"aad", &wrapped)
            .expect("opens")
            .as_slice(),
        data
    );
    assert!(aead::unwrap(&key, b"other", &wrapped).is_err());
});
