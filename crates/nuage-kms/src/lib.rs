//! The key service: the platform root key and how it is sealed, per-project
//! key-encryption keys (KEKs) with versions, data-encryption keys (DEKs)
//! wrapped by them, and keys held outside nuage (KMIP, OpenBao Transit).
//!
//! Every storage path of nuage encrypts through this crate: small secrets
//! with `seal`/`open`, large data with a per-resource DEK and the chunked
//! [`stream`] format. Keys never leave it in clear except as DEKs handed to
//! the service that encrypts, which hold them in zeroizing buffers.

pub mod aead;
pub mod bench;
pub mod cache;
pub mod external;
pub mod root;
pub mod service;
pub mod stream;

#[cfg(feature = "test-support")]
pub mod testing;

pub use service::{DataKey, KeyUse, Kms, KmsConfig, Purpose, DEFAULT_KEY};
