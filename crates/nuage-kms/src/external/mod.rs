//! Key managers outside nuage that hold a tenant's key-encryption key: the
//! key material never enters nuage; data keys are wrapped and unwrapped by
//! calls to the external server.
//!
//! Both kinds expose the same two calls, on opaque byte strings:
//! `encrypt(key, plaintext) -> blob` and `decrypt(key, blob) -> plaintext`.
//! Binding a wrapped key to its owner is done above this layer.

pub mod kmip;
pub mod transit;

/// Why an external key manager did not answer with a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    /// Network, TLS handshake or timeout: the service may come back.
    #[error("key manager unreachable: {0}")]
    Unreachable(String),
    /// The manager answered but refuses to use the key (revoked, destroyed,
    /// deactivated, unknown, permission denied).
    #[error("key unusable: {0}")]
    KeyUnusable(String),
    /// Anything else the manager or our client did not expect.
    #[error("key manager error: {0}")]
    Protocol(String),
}

/// A connected client of either kind.
#[derive(Clone)]
pub enum ExternalClient {
    Kmip(kmip::KmipClient),
    Transit(transit::TransitClient),
}

impl ExternalClient {
    pub async fn encrypt(&self, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, ExternalError> {
        match self {
            ExternalClient::Kmip(c) => c.encrypt(key, plaintext).await,
            ExternalClient::Transit(c) => c.encrypt(key, plaintext).await,
        }
    }

    pub async fn decrypt(
        &self,
        key: &str,
        blob: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ExternalError> {
        match self {
            ExternalClient::Kmip(c) => c.decrypt(key, blob).await,
            ExternalClient::Transit(c) => c.decrypt(key, blob).await,
        }
    }
}
