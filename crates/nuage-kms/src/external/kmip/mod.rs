//! A KMIP 1.2 client for tenants whose key-encryption key lives in their own
//! key manager (an HSM or any KMIP server): the key never leaves that server;
//! nuage asks it to encrypt and decrypt small values (wrapped data keys).
//!
//! The protocol is TTLV ([`ttlv`]) over mutually authenticated TLS (rustls
//! with the ring provider). Only the operations nuage needs are spoken:
//! Create (AES-256), Activate, Revoke, Destroy, Encrypt, Decrypt. Encryption
//! is AES-CBC with PKCS#5 padding and a server-chosen IV, the mode every
//! KMIP 1.2 server offers; the blob is `iv (16 bytes) ‖ ciphertext`, which is
//! not authenticated here: binding a blob to its owner is done above.
//!
//! A few TLS connections are kept open between calls; a kept connection
//! that turns out to be closed is replaced once by a fresh one, so a
//! restarted server is picked up on the next call. Every call, retry
//! included, is bounded by the configured timeout.

pub mod ttlv;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use self::ttlv::{multiple_of, Ttlv, HEADER_LEN, MAX_MESSAGE};
use super::ExternalError;

/// Idle connections kept per client.
const MAX_IDLE: usize = 4;
const AES_BLOCK: usize = 16;

mod tag {
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const COMPROMISE_OCCURRENCE_DATE: u32 = 0x420021;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const IV_COUNTER_NONCE: u32 = 0x42003D;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PADDING_METHOD: u32 = 0x42005F;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const REVOCATION_REASON: u32 = 0x420081;
    pub const REVOCATION_REASON_CODE: u32 = 0x420082;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const DATA: u32 = 0x4200C2;
    pub const RANDOM_IV: u32 = 0x4200C5;
}

const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
const ALGORITHM_AES: u32 = 0x03;
const MODE_CBC: u32 = 0x01;
const PADDING_PKCS5: u32 = 0x03;
const USAGE_ENCRYPT: i32 = 0x04;
const USAGE_DECRYPT: i32 = 0x08;
const NAME_TYPE_TEXT: u32 = 0x01;

const STATUS_SUCCESS: u32 = 0x00;
const STATUS_FAILED: u32 = 0x01;
const STATUS_PENDING: u32 = 0x02;
const STATUS_UNDONE: u32 = 0x03;

/// Where the KMIP server is and how to prove who we are.
#[derive(Clone)]
pub struct KmipConfig {
    pub host: String,
    pub port: u16,
    /// Name checked against the server certificate; `host` when absent.
    pub server_name: Option<String>,
    /// CA certificate(s) the server certificate must chain to.
    pub ca_pem: String,
    /// Client certificate, optionally followed by intermediates.
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// Bound on each call: connect, handshake, request and response.
    pub timeout: Duration,
}

impl fmt::Debug for KmipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmipConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .field("client_key_pem", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a key is revoked (KMIP Revocation Reason Code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified,
    /// Allowed in every state; the key becomes Compromised.
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    /// Only for an active key, which becomes Deactivated.
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn code(self) -> u32 {
        match self {
            Self::Unspecified => 0x01,
            Self::KeyCompromise => 0x02,
            Self::AffiliationChanged => 0x04,
            Self::Superseded => 0x05,
            Self::CessationOfOperation => 0x06,
            Self::PrivilegeWithdrawn => 0x07,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Activate,
    Revoke,
    Destroy,
    Encrypt,
    Decrypt,
}

impl Operation {
    fn code(self) -> u32 {
        match self {
            Self::Create => 0x01,
            Self::Activate => 0x12,
            Self::Revoke => 0x13,
            Self::Destroy => 0x14,
            Self::Encrypt => 0x1F,
            Self::Decrypt => 0x20,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A KMIP client; clones share the connection pool.
#[derive(Clone)]
pub struct KmipClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for KmipClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmipClient")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    host: String,
    port: u16,
    /// `host:port`, for messages.
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    timeout: Duration,
    idle: Mutex<Vec<TlsStream<TcpStream>>>,
}

fn config_error(what: impl fmt::Display) -> ExternalError {
    ExternalError::Protocol(format!("invalid KMIP configuration: {what}"))
}

impl KmipClient {
    /// Parses the PEMs and prepares TLS; does not connect.
    pub fn new(cfg: KmipConfig) -> Result<Self, ExternalError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut cfg.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| config_error(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| config_error(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(config_error("no CA certificate in ca_pem"));
        }
        let chain = rustls_pemfile::certs(&mut cfg.client_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_error(format!("client certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(config_error("no certificate in client_cert_pem"));
        }
        let key = rustls_pemfile::private_key(&mut cfg.client_key_pem.as_bytes())
            .map_err(|e| config_error(format!("client key PEM: {e}")))?
            .ok_or_else(|| config_error("no private key in client_key_pem"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_error(format!("client certificate and key: {e}")))?;
        let name = cfg.server_name.as_deref().unwrap_or(&cfg.host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| config_error(format!("server name {name:?}: {e}")))?;
        if cfg.timeout.is_zero() {
            return Err(config_error("timeout is zero"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                addr: format!("{}:{}", cfg.host, cfg.port),
                host: cfg.host,
                port: cfg.port,
                server_name,
                connector: TlsConnector::from(Arc::new(tls)),
                timeout: cfg.timeout,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Encrypts under the key `unique_id` (AES-CBC, PKCS#5); returns
    /// `iv ‖ ciphertext`.
    pub async fn encrypt(
        &self,
        unique_id: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ExternalError> {
        let payload = vec![
            Ttlv::text(tag::UNIQUE_IDENTIFIER, unique_id),
            cbc_parameters(true),
            Ttlv::bytes(tag::DATA, plaintext),
        ];
        let mut resp = self
            .call(Operation::Encrypt, Some(unique_id), payload)
            .await?;
        let malformed = |what: &str| self.malformed(Operation::Encrypt, what);
        let ciphertext = resp
            .take_child(tag::DATA)
            .and_then(|mut d| d.take_bytes())
            .ok_or_else(|| malformed("no Data"))?;
        let iv = resp
            .child(tag::IV_COUNTER_NONCE)
            .and_then(Ttlv::as_bytes)
            .ok_or_else(|| malformed("no IV/Counter/Nonce"))?;
        if iv.len() != AES_BLOCK {
            return Err(malformed(&format!("IV of {} bytes", iv.len())));
        }
        if ciphertext.is_empty() || !multiple_of(ciphertext.len(), AES_BLOCK) {
            return Err(malformed(&format!(
                "ciphertext of {} bytes",
                ciphertext.len()
            )));
        }
        let mut blob = Vec::with_capacity(AES_BLOCK + ciphertext.len());
        blob.extend_from_slice(iv);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    /// Decrypts a blob made by [`KmipClient::encrypt`] under the same key.
    pub async fn decrypt(
        &self,
        unique_id: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ExternalError> {
        if blob.len() < 2 * AES_BLOCK || !multiple_of(blob.len(), AES_BLOCK) {
            return Err(ExternalError::Protocol(format!(
                "KMIP blob of {} bytes is not iv ‖ AES-CBC ciphertext",
                blob.len()
            )));
        }
        let (iv, ciphertext) = blob.split_at(AES_BLOCK);
        let payload = vec![
            Ttlv::text(tag::UNIQUE_IDENTIFIER, unique_id),
            cbc_parameters(false),
            Ttlv::bytes(tag::DATA, ciphertext),
            Ttlv::bytes(tag::IV_COUNTER_NONCE, iv),
        ];
        let mut resp = self
            .call(Operation::Decrypt, Some(unique_id), payload)
            .await?;
        resp.take_child(tag::DATA)
            .and_then(|mut d| d.take_bytes())
            .ok_or_else(|| self.malformed(Operation::Decrypt, "no Data"))
    }

    /// Creates an AES-256 key usable for Encrypt and Decrypt, in the
    /// Pre-Active state; returns its unique identifier.
    pub async fn create_aes256_key(&self, name: Option<&str>) -> Result<String, ExternalError> {
        let attribute = |name: &str, value: Ttlv| {
            Ttlv::structure(
                tag::ATTRIBUTE,
                vec![Ttlv::text(tag::ATTRIBUTE_NAME, name), value],
            )
        };
        let mut attributes = vec![
            attribute(
                "Cryptographic Algorithm",
                Ttlv::enumeration(tag::ATTRIBUTE_VALUE, ALGORITHM_AES),
            ),
            attribute(
                "Cryptographic Length",
                Ttlv::integer(tag::ATTRIBUTE_VALUE, 256),
            ),
            attribute(
                "Cryptographic Usage Mask",
                Ttlv::integer(tag::ATTRIBUTE_VALUE, USAGE_ENCRYPT | USAGE_DECRYPT),
            ),
        ];
        if let Some(name) = name {
            attributes.push(attribute(
                "Name",
                Ttlv::structure(
                    tag::ATTRIBUTE_VALUE,
                    vec![
                        Ttlv::text(tag::NAME_VALUE, name),
                        Ttlv::enumeration(tag::NAME_TYPE, NAME_TYPE_TEXT),
                    ],
                ),
            ));
        }
        let payload = vec![
            Ttlv::enumeration(tag::OBJECT_TYPE, OBJECT_TYPE_SYMMETRIC_KEY),
            Ttlv::structure(tag::TEMPLATE_ATTRIBUTE, attributes),
        ];
        let resp = self.call(Operation::Create, None, payload).await?;
        resp.child(tag::UNIQUE_IDENTIFIER)
            .and_then(Ttlv::as_text)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| self.malformed(Operation::Create, "no Unique Identifier"))
    }

    /// Moves a Pre-Active key to Active.
    pub async fn activate(&self, unique_id: &str) -> Result<(), ExternalError> {
        let payload = vec![Ttlv::text(tag::UNIQUE_IDENTIFIER, unique_id)];
        self.call(Operation::Activate, Some(unique_id), payload)
            .await?;
        Ok(())
    }

    /// Revokes an active key for cessation of operation: it can no longer
    /// encrypt or decrypt.
    pub async fn revoke(&self, unique_id: &str) -> Result<(), ExternalError> {
        self.revoke_with(unique_id, RevocationReason::CessationOfOperation)
            .await
    }

    /// Revokes a key with an explicit reason.
    pub async fn revoke_with(
        &self,
        unique_id: &str,
        reason: RevocationReason,
    ) -> Result<(), ExternalError> {
        let mut payload = vec![
            Ttlv::text(tag::UNIQUE_IDENTIFIER, unique_id),
            Ttlv::structure(
                tag::REVOCATION_REASON,
                vec![Ttlv::enumeration(
                    tag::REVOCATION_REASON_CODE,
                    reason.code(),
                )],
            ),
        ];
        if reason == RevocationReason::KeyCompromise {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            payload.push(Ttlv::date_time(
                tag::COMPROMISE_OCCURRENCE_DATE,
                i64::try_from(now).unwrap_or(i64::MAX),
            ));
        }
        self.call(Operation::Revoke, Some(unique_id), payload)
            .await?;
        Ok(())
    }

    /// Destroys a key that is not active (revoke it first).
    pub async fn destroy(&self, unique_id: &str) -> Result<(), ExternalError> {
        let payload = vec![Ttlv::text(tag::UNIQUE_IDENTIFIER, unique_id)];
        self.call(Operation::Destroy, Some(unique_id), payload)
            .await?;
        Ok(())
    }

    fn malformed(&self, op: Operation, what: &str) -> ExternalError {
        ExternalError::Protocol(format!(
            "KMIP {}: malformed answer to {op}: {what}",
            self.inner.addr
        ))
    }

    /// Sends one single-item batch and returns the response payload of a
    /// successful result.
    async fn call(
        &self,
        op: Operation,
        key: Option<&str>,
        payload: Vec<Ttlv>,
    ) -> Result<Ttlv, ExternalError> {
        let request = request_message(op, payload);
        let bytes = ttlv::encode(&request)
            .map_err(|e| ExternalError::Protocol(format!("KMIP {op} request: {e}")))?;
        drop(request);
        let response = self.inner.round_trip(&bytes).await?;
        let message = ttlv::decode(&response).map_err(|e| self.malformed(op, &e.to_string()))?;
        self.result(op, key, message)
    }

    fn result(
        &self,
        op: Operation,
        key: Option<&str>,
        mut message: Ttlv,
    ) -> Result<Ttlv, ExternalError> {
        if message.tag != tag::RESPONSE_MESSAGE {
            return Err(self.malformed(op, &format!("tag {:#08x}", message.tag)));
        }
        let mut item = message
            .take_child(tag::BATCH_ITEM)
            .ok_or_else(|| self.malformed(op, "no Batch Item"))?;
        if let Some(answered) = item.child(tag::OPERATION) {
            if answered.as_enumeration() != Some(op.code()) {
                return Err(
                    self.malformed(op, &format!("a result for operation {:?}", answered.value))
                );
            }
        }
        let status = item
            .child(tag::RESULT_STATUS)
            .and_then(Ttlv::as_enumeration)
            .ok_or_else(|| self.malformed(op, "no Result Status"))?;
        match status {
            STATUS_SUCCESS => item
                .take_child(tag::RESPONSE_PAYLOAD)
                .ok_or_else(|| self.malformed(op, "no Response Payload")),
            STATUS_FAILED => {
                let reason = item
                    .child(tag::RESULT_REASON)
                    .and_then(Ttlv::as_enumeration);
                let text = item
                    .child(tag::RESULT_MESSAGE)
                    .and_then(Ttlv::as_text)
                    .unwrap_or("");
                let subject = match key {
                    Some(k) => format!("{op} with key {k:?}"),
                    None => op.to_string(),
                };
                let detail = format!(
                    "KMIP {}: {subject} failed: {}: {text}",
                    self.inner.addr,
                    reason.map_or_else(|| "no reason".to_owned(), reason_name)
                );
                Err(if reason.is_some_and(key_unusable) {
                    ExternalError::KeyUnusable(detail)
                } else {
                    ExternalError::Protocol(detail)
                })
            }
            STATUS_PENDING | STATUS_UNDONE => Err(self.malformed(op, "an asynchronous result")),
            other => Err(self.malformed(op, &format!("result status {other}"))),
        }
    }
}

fn request_message(op: Operation, payload: Vec<Ttlv>) -> Ttlv {
    Ttlv::structure(
        tag::REQUEST_MESSAGE,
        vec![
            Ttlv::structure(
                tag::REQUEST_HEADER,
                vec![
                    Ttlv::structure(
                        tag::PROTOCOL_VERSION,
                        vec![
                            Ttlv::integer(tag::PROTOCOL_VERSION_MAJOR, 1),
                            Ttlv::integer(tag::PROTOCOL_VERSION_MINOR, 2),
                        ],
                    ),
                    Ttlv::integer(tag::BATCH_COUNT, 1),
                ],
            ),
            Ttlv::structure(
                tag::BATCH_ITEM,
                vec![
                    Ttlv::enumeration(tag::OPERATION, op.code()),
                    Ttlv::structure(tag::REQUEST_PAYLOAD, payload),
                ],
            ),
        ],
    )
}

/// AES-CBC-PKCS5 parameters, in the order the spec lists them.
fn cbc_parameters(random_iv: bool) -> Ttlv {
    let mut params = vec![
        Ttlv::enumeration(tag::BLOCK_CIPHER_MODE, MODE_CBC),
        Ttlv::enumeration(tag::PADDING_METHOD, PADDING_PKCS5),
        Ttlv::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, ALGORITHM_AES),
    ];
    if random_iv {
        params.push(Ttlv::boolean(tag::RANDOM_IV, true));
    }
    Ttlv::structure(tag::CRYPTOGRAPHIC_PARAMETERS, params)
}

/// Result reasons saying the server will not use this key (as opposed to
/// not understanding us).
fn key_unusable(reason: u32) -> bool {
    matches!(
        reason,
        0x01 // Item Not Found
            | 0x0B // Illegal Operation (e.g. revoking a key that is not active)
            | 0x0C // Permission Denied
            | 0x0D // Object Archived
            | 0x13 // Key Value Not Present
            | 0x29 // Incompatible Cryptographic Usage Mask
            | 0x36 // Object Destroyed
            | 0x37 // Object Not Found
            | 0x39 // Not Authorised
            | 0x43 // Wrong Key Lifecycle State
    )
}

fn reason_name(reason: u32) -> String {
    let name = match reason {
        0x01 => "Item Not Found",
        0x02 => "Response Too Large",
        0x03 => "Authentication Not Successful",
        0x04 => "Invalid Message",
        0x05 => "Operation Not Supported",
        0x06 => "Missing Data",
        0x07 => "Invalid Field",
        0x08 => "Feature Not Supported",
        0x09 => "Operation Canceled By Requester",
        0x0A => "Cryptographic Failure",
        0x0B => "Illegal Operation",
        0x0C => "Permission Denied",
        0x0D => "Object Archived",
        0x0E => "Index Out of Bounds",
        0x13 => "Key Value Not Present",
        0x29 => "Incompatible Cryptographic Usage Mask",
        0x36 => "Object Destroyed",
        0x37 => "Object Not Found",
        0x39 => "Not Authorised",
        0x43 => "Wrong Key Lifecycle State",
        0x100 => "General Failure",
        other => return format!("result reason {other:#x}"),
    };
    name.to_owned()
}

/// How an exchange on one connection failed.
enum ExchangeError {
    /// Nothing came back at all: a kept connection the server had closed.
    Stale(std::io::Error),
    Failed(ExternalError),
}

impl Inner {
    async fn round_trip(&self, request: &[u8]) -> Result<Zeroizing<Vec<u8>>, ExternalError> {
        match tokio::time::timeout(self.timeout, self.round_trip_unbounded(request)).await {
            Ok(result) => result,
            Err(_) => Err(ExternalError::Unreachable(format!(
                "KMIP {}: no answer within {:?}",
                self.addr, self.timeout
            ))),
        }
    }

    async fn round_trip_unbounded(
        &self,
        request: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ExternalError> {
        if let Some(mut stream) = self.take_idle() {
            match self.exchange(&mut stream, request).await {
                Ok(response) => {
                    self.put_idle(stream);
                    return Ok(response);
                }
                Err(ExchangeError::Stale(e)) => {
                    tracing::debug!(addr = %self.addr, error = %e, "kept KMIP connection closed; reconnecting");
                }
                Err(ExchangeError::Failed(e)) => return Err(e),
            }
        }
        let mut stream = self.connect().await?;
        match self.exchange(&mut stream, request).await {
            Ok(response) => {
                self.put_idle(stream);
                Ok(response)
            }
            Err(ExchangeError::Stale(e)) => Err(self.unreachable("connection closed", e)),
            Err(ExchangeError::Failed(e)) => Err(e),
        }
    }

    fn unreachable(&self, what: &str, e: impl fmt::Display) -> ExternalError {
        ExternalError::Unreachable(format!("KMIP {}: {what}: {e}", self.addr))
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, ExternalError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable("connect", e))?;
        // Requests are single small writes; waiting for Nagle only adds latency.
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| self.unreachable("TLS handshake", e))
    }

    async fn exchange(
        &self,
        stream: &mut TlsStream<TcpStream>,
        request: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ExchangeError> {
        if let Err(e) = stream.write_all(request).await {
            return Err(ExchangeError::Stale(e));
        }
        if let Err(e) = stream.flush().await {
            return Err(ExchangeError::Stale(e));
        }
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match stream.read(&mut header[got..]).await {
                Ok(0) if got == 0 => {
                    return Err(ExchangeError::Stale(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(0) => {
                    return Err(ExchangeError::Failed(
                        self.unreachable("connection lost", "inside a response header"),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if got == 0 => return Err(ExchangeError::Stale(e)),
                Err(e) => return Err(ExchangeError::Failed(self.unreachable("read", e))),
            }
        }
        let (tag, typ, len) = ttlv::parse_header(&header);
        if tag != tag::RESPONSE_MESSAGE
            || typ != 0x01
            || !multiple_of(len, 8)
            || len > MAX_MESSAGE - HEADER_LEN
        {
            return Err(ExchangeError::Failed(ExternalError::Protocol(format!(
                "KMIP {}: not a KMIP response (tag {tag:#08x}, type {typ:#04x}, length {len})",
                self.addr
            ))));
        }
        let mut message = Zeroizing::new(vec![0u8; HEADER_LEN + len]);
        message[..HEADER_LEN].copy_from_slice(&header);
        stream
            .read_exact(&mut message[HEADER_LEN..])
            .await
            .map_err(|e| ExchangeError::Failed(self.unreachable("read", e)))?;
        Ok(message)
    }

    fn take_idle(&self) -> Option<TlsStream<TcpStream>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, stream: TlsStream<TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(items: Vec<Ttlv>) -> Ttlv {
        Ttlv::structure(
            tag::RESPONSE_MESSAGE,
            vec![Ttlv::structure(tag::BATCH_ITEM, items)],
        )
    }

    fn client() -> KmipClient {
        let dummy = Inner {
            host: "127.0.0.1".into(),
            port: 5696,
            addr: "127.0.0.1:5696".into(),
            server_name: ServerName::try_from("127.0.0.1").unwrap().to_owned(),
            connector: TlsConnector::from(Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )),
            timeout: Duration::from_secs(1),
            idle: Mutex::new(Vec::new()),
        };
        KmipClient {
            inner: Arc::new(dummy),
        }
    }

    #[test]
    fn request_message_shape() {
        let msg = request_message(
            Operation::Activate,
            vec![Ttlv::text(tag::UNIQUE_IDENTIFIER, "7")],
        );
        let wire = ttlv::encode(&msg).unwrap();
        assert_eq!(ttlv::decode(&wire).unwrap(), msg);
        let header = msg.child(tag::REQUEST_HEADER).unwrap();
        let version = header.child(tag::PROTOCOL_VERSION).unwrap();
        assert_eq!(
            version
                .child(tag::PROTOCOL_VERSION_MINOR)
                .unwrap()
                .as_integer(),
            Some(2)
        );
        let item = msg.child(tag::BATCH_ITEM).unwrap();
        assert_eq!(
            item.child(tag::OPERATION).unwrap().as_enumeration(),
            Some(0x12)
        );
    }

    #[test]
    fn failures_are_classified() {
        let c = client();
        let failed = |reason: u32| {
            response(vec![
                Ttlv::enumeration(tag::OPERATION, Operation::Decrypt.code()),
                Ttlv::enumeration(tag::RESULT_STATUS, STATUS_FAILED),
                Ttlv::enumeration(tag::RESULT_REASON, reason),
                Ttlv::text(tag::RESULT_MESSAGE, "the server says no"),
            ])
        };
        match c.result(Operation::Decrypt, Some("42"), failed(0x0C)) {
            Err(ExternalError::KeyUnusable(m)) => {
                assert!(
                    m.contains("Permission Denied")
                        && m.contains("the server says no")
                        && m.contains("42"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.result(Operation::Decrypt, Some("42"), failed(0x01)),
            Err(ExternalError::KeyUnusable(_))
        ));
        assert!(matches!(
            c.result(Operation::Decrypt, Some("42"), failed(0x43)),
            Err(ExternalError::KeyUnusable(_))
        ));
        assert!(matches!(
            c.result(Operation::Decrypt, Some("42"), failed(0x0A)),
            Err(ExternalError::Protocol(_))
        ));
    }

    #[test]
    fn odd_answers_are_protocol_errors() {
        let c = client();
        let cases = [
            Ttlv::structure(tag::REQUEST_MESSAGE, vec![]),
            Ttlv::structure(tag::RESPONSE_MESSAGE, vec![]),
            response(vec![]),
            response(vec![Ttlv::enumeration(tag::RESULT_STATUS, STATUS_SUCCESS)]),
            response(vec![Ttlv::enumeration(tag::RESULT_STATUS, STATUS_PENDING)]),
            response(vec![
                Ttlv::enumeration(tag::OPERATION, Operation::Encrypt.code()),
                Ttlv::enumeration(tag::RESULT_STATUS, STATUS_SUCCESS),
                Ttlv::structure(tag::RESPONSE_PAYLOAD, vec![]),
            ]),
            Ttlv::integer(tag::RESPONSE_MESSAGE, 0),
        ];
        for case in cases {
            assert!(
                matches!(
                    c.result(Operation::Decrypt, Some("1"), case.clone()),
                    Err(ExternalError::Protocol(_))
                ),
                "{case:?}"
            );
        }
        let ok = response(vec![
            Ttlv::enumeration(tag::RESULT_STATUS, STATUS_SUCCESS),
            Ttlv::structure(
                tag::RESPONSE_PAYLOAD,
                vec![Ttlv::text(tag::UNIQUE_IDENTIFIER, "1")],
            ),
        ]);
        assert!(c.result(Operation::Decrypt, Some("1"), ok).is_ok());
    }

    #[test]
    fn bad_configuration_is_rejected() {
        let cfg = KmipConfig {
            host: "127.0.0.1".into(),
            port: 1,
            server_name: None,
            ca_pem: "not a pem".into(),
            client_cert_pem: String::new(),
            client_key_pem: String::new(),
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            KmipClient::new(cfg.clone()),
            Err(ExternalError::Protocol(_))
        ));
        assert!(!format!("{cfg:?}").contains("not a pem"));
    }

    #[tokio::test]
    async fn short_blobs_are_refused_locally() {
        let c = client();
        for len in [0, 16, 31, 33] {
            assert!(matches!(
                c.decrypt("1", &vec![0; len]).await,
                Err(ExternalError::Protocol(_))
            ));
        }
    }
}
