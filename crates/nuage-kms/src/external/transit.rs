//! Client for the Transit secrets engine of OpenBao or HashiCorp Vault: a
//! tenant's key-encryption key lives in Transit and nuage only ever sends it
//! data keys to wrap (`encrypt`) or unwrap (`decrypt`).
//!
//! Transit creates a missing key on `encrypt` when the token may create it
//! ("upsert"). nuage creates keys explicitly with [`TransitClient::create_key`],
//! so deployments should give nuage's token only `update` on the encrypt and
//! decrypt paths, or set `disable_upsert` on `<mount>/config/keys`; then a
//! wrong key name is refused instead of silently becoming a new key.
//!
//! Errors never carry the token or a plaintext: the token is sent as a
//! sensitive header and plaintexts are only held in zeroizing buffers on our
//! side (the copy handed to the HTTP stack is beyond our reach).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::ExternalError;

/// Largest response body read from the server; Transit answers are small.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Longest server error text kept in an [`ExternalError`].
const MAX_ERROR_TEXT: usize = 300;
/// Longest key name accepted (our limit, not Transit's).
const MAX_KEY_NAME: usize = 128;
const KEY_TYPE: &str = "aes256-gcm96";

/// Where and as whom to reach a Transit engine.
#[derive(Clone)]
pub struct TransitConfig {
    /// Base address, e.g. `https://127.0.0.1:8200`; `http://` only on loopback.
    pub address: String,
    pub token: String,
    /// Mount path of the engine, `transit` by default.
    pub mount: String,
    /// PEM certificates to trust instead of the public web roots.
    pub ca_pem: Option<String>,
    /// Bound on each request, connection included.
    pub timeout: Duration,
}

impl TransitConfig {
    /// A configuration with the default mount and a 10 s timeout.
    pub fn new(address: impl Into<String>, token: impl Into<String>) -> Self {
        TransitConfig {
            address: address.into(),
            token: token.into(),
            mount: "transit".to_string(),
            ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for TransitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitConfig")
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .field("mount", &self.mount)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Transit client; cloning is cheap and clones share one connection pool.
#[derive(Clone)]
pub struct TransitClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Address as configured, for error messages.
    address: String,
    /// `<address>/v1/<mount>/`, always ending in `/`.
    base: Url,
    token: HeaderValue,
    timeout: Duration,
}

impl fmt::Debug for TransitClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitClient")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

#[derive(Deserialize)]
struct CiphertextData {
    ciphertext: String,
}

#[derive(Deserialize)]
struct PlaintextData<'a> {
    #[serde(borrow)]
    plaintext: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct KeyData {
    #[serde(rename = "type")]
    key_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

impl TransitClient {
    /// Checks the configuration and builds the HTTP client; no request is
    /// sent yet.
    pub fn new(cfg: TransitConfig) -> Result<Self, ExternalError> {
        let config_err = |what: &str| ExternalError::Protocol(format!("transit config: {what}"));
        let url = Url::parse(cfg.address.trim())
            .map_err(|e| config_err(&format!("invalid address {:?}: {e}", cfg.address)))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(config_err("the address must not carry credentials"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(config_err("the address must not have a query or fragment"));
        }
        match url.scheme() {
            "https" => {}
            "http" if host_is_loopback(&url) => {}
            "http" => {
                return Err(config_err(
                    "plain http is only allowed to a loopback address; use https",
                ))
            }
            other => return Err(config_err(&format!("unsupported scheme {other:?}"))),
        }
        let mount = validate_mount(&cfg.mount).map_err(|e| config_err(&e))?;
        let base = Url::parse(&format!(
            "{}/v1/{mount}/",
            url.as_str().trim_end_matches('/')
        ))
        .map_err(|e| config_err(&format!("invalid address: {e}")))?;

        if cfg.token.is_empty() {
            return Err(config_err("the token is empty"));
        }
        let mut token = HeaderValue::from_str(&cfg.token)
            .map_err(|_| config_err("the token contains characters not allowed in a header"))?;
        token.set_sensitive(true);
        if cfg.timeout.is_zero() {
            return Err(config_err("the timeout is zero"));
        }

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if url.scheme() == "http" {
            builder = builder.no_proxy();
        }
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| config_err(&format!("invalid CA PEM: {e}")))?;
            if certs.is_empty() {
                return Err(config_err("the CA PEM holds no certificate"));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| config_err(&format!("cannot build HTTP client: {}", error_chain(&e))))?;

        Ok(TransitClient {
            inner: Arc::new(Inner {
                http,
                address: cfg.address,
                base,
                token,
                timeout: cfg.timeout,
            }),
        })
    }

    /// Encrypts `plaintext` with the newest version of the key; returns the
    /// `vault:vN:...` ciphertext.
    pub async fn encrypt(
        &self,
        key_name: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ExternalError> {
        validate_key_name(key_name)?;
        let mut body = String::with_capacity(plaintext.len() * 4 / 3 + 20);
        body.push_str("{\"plaintext\":\"");
        B64.encode_string(plaintext, &mut body);
        body.push_str("\"}");
        let resp = self
            .call(Method::POST, &format!("encrypt/{key_name}"), Some(body))
            .await?;
        ciphertext_of(&resp, "encrypt")
    }

    /// Decrypts a ciphertext made by [`encrypt`](Self::encrypt) or
    /// [`rewrap`](Self::rewrap) with the same key.
    pub async fn decrypt(
        &self,
        key_name: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ExternalError> {
        validate_key_name(key_name)?;
        let body = ciphertext_body(blob)?;
        let resp = self
            .call(Method::POST, &format!("decrypt/{key_name}"), Some(body))
            .await?;
        let env: Envelope<PlaintextData<'_>> = serde_json::from_slice(&resp)
            .map_err(|_| ExternalError::Protocol("decrypt: malformed response".into()))?;
        let data = env
            .data
            .ok_or_else(|| ExternalError::Protocol("decrypt: response without data".into()))?;
        let mut out = Zeroizing::new(Vec::with_capacity(data.plaintext.len() * 3 / 4 + 3));
        B64.decode_vec(data.plaintext.as_bytes(), &mut out)
            .map_err(|_| ExternalError::Protocol("decrypt: plaintext is not base64".into()))?;
        if let std::borrow::Cow::Owned(s) = data.plaintext {
            drop(Zeroizing::new(s));
        }
        Ok(out)
    }

    /// Re-encrypts a ciphertext under the newest key version without the
    /// plaintext leaving Transit.
    pub async fn rewrap(&self, key_name: &str, blob: &[u8]) -> Result<Vec<u8>, ExternalError> {
        validate_key_name(key_name)?;
        let body = ciphertext_body(blob)?;
        let resp = self
            .call(Method::POST, &format!("rewrap/{key_name}"), Some(body))
            .await?;
        ciphertext_of(&resp, "rewrap")
    }

    /// Creates an `aes256-gcm96` key; succeeds if that key already exists,
    /// fails if a key of another type holds the name.
    pub async fn create_key(&self, key_name: &str) -> Result<(), ExternalError> {
        validate_key_name(key_name)?;
        let body = format!("{{\"type\":\"{KEY_TYPE}\"}}");
        let resp = self
            .call(Method::POST, &format!("keys/{key_name}"), Some(body))
            .await?;
        if resp.is_empty() {
            return Ok(());
        }
        let env: Envelope<KeyData> = serde_json::from_slice(&resp)
            .map_err(|_| ExternalError::Protocol("create key: malformed response".into()))?;
        match env.data.and_then(|d| d.key_type) {
            Some(t) if t != KEY_TYPE => Err(ExternalError::KeyUnusable(format!(
                "key {key_name:?} exists with type {t:?}, not {KEY_TYPE}"
            ))),
            _ => Ok(()),
        }
    }

    /// Adds a new key version; new encryptions use it, old ciphertexts still
    /// decrypt.
    pub async fn rotate_key(&self, key_name: &str) -> Result<(), ExternalError> {
        validate_key_name(key_name)?;
        self.call(Method::POST, &format!("keys/{key_name}/rotate"), None)
            .await
            .map(drop)
    }

    /// Destroys the key and with it every ciphertext made with it. Deleting
    /// a key that no longer exists succeeds, so a retried deletion does not
    /// fail.
    pub async fn delete_key(&self, key_name: &str) -> Result<(), ExternalError> {
        validate_key_name(key_name)?;
        let allow = self
            .call(
                Method::POST,
                &format!("keys/{key_name}/config"),
                Some("{\"deletion_allowed\":true}".to_string()),
            )
            .await;
        match allow {
            Ok(_) => {}
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        match self
            .call(Method::DELETE, &format!("keys/{key_name}"), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends one request; returns the body of a 2xx answer, maps everything
    /// else to an [`ExternalError`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Zeroizing<Vec<u8>>, ExternalError> {
        let inner = &*self.inner;
        let url = inner
            .base
            .join(path)
            .map_err(|e| ExternalError::Protocol(format!("cannot build request URL: {e}")))?;
        let mut req = inner
            .http
            .request(method.clone(), url)
            .header("X-Vault-Token", inner.token.clone())
            .header("X-Vault-Request", "true");
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let mut resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let mut buf = Zeroizing::new(Vec::new());
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(ExternalError::Protocol(format!(
                            "response to {} is larger than {MAX_RESPONSE_BYTES} bytes",
                            describe(&method, path)
                        )));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(self.transport_error(&e)),
            }
        }
        tracing::debug!(
            target: "nuage_kms::transit",
            method = %method,
            path,
            status = status.as_u16(),
            "transit request"
        );
        if status.is_success() {
            return Ok(buf);
        }
        let err = status_error(status, &buf, &describe(&method, path));
        Err(redact(err, inner.token.to_str().unwrap_or_default()))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ExternalError {
        let address = &self.inner.address;
        if e.is_timeout() {
            ExternalError::Unreachable(format!(
                "no answer from {address} within {:?}",
                self.inner.timeout
            ))
        } else if e.is_connect() {
            ExternalError::Unreachable(format!("cannot connect to {address}: {}", error_chain(e)))
        } else if e.is_request() || e.is_body() {
            ExternalError::Unreachable(format!(
                "connection to {address} failed: {}",
                error_chain(e)
            ))
        } else {
            ExternalError::Protocol(format!("request to {address} failed: {}", error_chain(e)))
        }
    }
}

/// The error text of a reqwest error and its causes, without the URL.
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts: Vec<String> = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(if e.is_timeout() {
            "timed out".to_string()
        } else {
            "request failed".to_string()
        });
    }
    parts.join(": ")
}

/// What a request does, for error messages: `encrypt with key "k"`.
fn describe(method: &Method, path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    match (method, parts.as_slice()) {
        (_, [op @ ("encrypt" | "decrypt" | "rewrap"), key]) => format!("{op} with key {key:?}"),
        (&Method::DELETE, ["keys", key]) => format!("delete key {key:?}"),
        (_, ["keys", key]) => format!("create key {key:?}"),
        (_, ["keys", key, "rotate"]) => format!("rotate key {key:?}"),
        (_, ["keys", key, "config"]) => format!("configure key {key:?}"),
        _ => format!("{method} {path}"),
    }
}

/// The server's error text on one line: the `errors` of a JSON answer
/// (unwrapping Go's "1 error occurred: * ..." lists), else a short plain
/// text body, else the status reason.
fn server_text(status: StatusCode, body: &[u8]) -> String {
    let one_line = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let from_json = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| {
            b.errors
                .iter()
                .map(|e| {
                    let items: Vec<&str> = e
                        .lines()
                        .filter_map(|l| l.trim().strip_prefix("* "))
                        .collect();
                    let listed = e.lines().next().is_some_and(|l| l.contains(" occurred:"));
                    if listed && !items.is_empty() {
                        items.join("; ")
                    } else {
                        one_line(e)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|t| !t.is_empty());
    let text = from_json.or_else(|| {
        std::str::from_utf8(body)
            .ok()
            .map(one_line)
            .filter(|t| !t.is_empty() && !t.starts_with('<') && !t.starts_with('{'))
    });
    let text = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no error text")
            .to_string()
    });
    truncate(&text)
}

fn redact(err: ExternalError, token: &str) -> ExternalError {
    let fix = |t: String| {
        if token.len() >= 4 && t.contains(token) {
            t.replace(token, "<token>")
        } else {
            t
        }
    };
    match err {
        ExternalError::Unreachable(t) => ExternalError::Unreachable(fix(t)),
        ExternalError::KeyUnusable(t) => ExternalError::KeyUnusable(fix(t)),
        ExternalError::Protocol(t) => ExternalError::Protocol(fix(t)),
    }
}

fn status_error(status: StatusCode, body: &[u8], op: &str) -> ExternalError {
    let text = server_text(status, body);
    let code = status.as_u16();
    match code {
        403 => ExternalError::KeyUnusable(format!("{op}: {text} (HTTP 403)")),
        404 => ExternalError::KeyUnusable(format!("{op}: {text} (HTTP 404)")),
        400 if about_unusable_key(&text) => {
            ExternalError::KeyUnusable(format!("{op}: {text} (HTTP 400)"))
        }
        429 | 503 => ExternalError::Unreachable(format!("{op}: {text} (HTTP {code})")),
        _ => ExternalError::Protocol(format!("{op}: {text} (HTTP {code})")),
    }
}

/// Whether a 400 answer says the key is missing, retired or cannot do the
/// operation (as opposed to a bad request or a corrupt ciphertext).
fn about_unusable_key(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "key not found",
        "no existing key named",
        "could not delete key; not found",
        "disallowed by policy",
        "not supported for key type",
        "does not support",
        "key is soft-deleted",
        "soft deleted",
        "deletion is not allowed",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Whether the error says the key does not exist (for idempotent deletion).
fn is_gone(e: &ExternalError) -> bool {
    match e {
        ExternalError::KeyUnusable(t) => {
            t.contains("no existing key named") || t.contains("not found (HTTP 400)")
        }
        _ => false,
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn ciphertext_of(resp: &[u8], op: &str) -> Result<Vec<u8>, ExternalError> {
    let env: Envelope<CiphertextData> = serde_json::from_slice(resp)
        .map_err(|_| ExternalError::Protocol(format!("{op}: malformed response")))?;
    let ct = env
        .data
        .ok_or_else(|| ExternalError::Protocol(format!("{op}: response without data")))?
        .ciphertext;
    if !is_transit_ciphertext(&ct) {
        return Err(ExternalError::Protocol(format!(
            "{op}: response is not a Transit ciphertext"
        )));
    }
    Ok(ct.into_bytes())
}

fn is_transit_ciphertext(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("vault:v") else {
        return false;
    };
    let Some((version, payload)) = rest.split_once(':') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && !payload.is_empty()
        && payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
}

fn ciphertext_body(blob: &[u8]) -> Result<String, ExternalError> {
    let ct = std::str::from_utf8(blob)
        .ok()
        .filter(|s| is_transit_ciphertext(s))
        .ok_or_else(|| {
            ExternalError::Protocol("blob is not a Transit ciphertext (vault:vN:...)".into())
        })?;
    Ok(format!("{{\"ciphertext\":\"{ct}\"}}"))
}

/// Key names go into URL paths: only `[A-Za-z0-9_.-]`, starting and ending
/// with a letter, digit or `_`, no `..`.
pub fn validate_key_name(name: &str) -> Result<(), ExternalError> {
    let bad = |why: &str| ExternalError::Protocol(format!("invalid Transit key name: {why}"));
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_KEY_NAME {
        return Err(bad(&format!("longer than {MAX_KEY_NAME} bytes")));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(bad(
            "only ASCII letters, digits, '_', '-' and '.' are allowed",
        ));
    }
    let edge_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = name.as_bytes();
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return Err(bad("must start and end with a letter, digit or '_'"));
    }
    if name.contains("..") {
        return Err(bad("contains '..'"));
    }
    Ok(())
}

fn validate_mount(mount: &str) -> Result<String, String> {
    let trimmed = mount.trim_matches('/');
    if trimmed.is_empty() {
        return Err("the mount is empty".into());
    }
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("invalid mount {mount:?}"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(format!("invalid character in mount {mount:?}"));
        }
    }
    Ok(trimmed.to_string())
}

fn host_is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str) -> TransitConfig {
        TransitConfig::new(address, "s.secret-token")
    }

    #[test]
    fn key_names_are_checked() {
        for ok in ["a", "tenant-1.kek", "A_b-9", "_x_"] {
            assert!(validate_key_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a/b", "..", "a..b", ".a", "a.", "-a", "a b", "a%2f", "é", "a?b", "a#b",
        ] {
            assert!(validate_key_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key_name(&"k".repeat(MAX_KEY_NAME + 1)).is_err());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(TransitClient::new(cfg("http://127.0.0.1:8200")).is_ok());
        assert!(TransitClient::new(cfg("http://[::1]:8200")).is_ok());
        assert!(TransitClient::new(cfg("http://localhost:8200")).is_ok());
        assert!(TransitClient::new(cfg("https://bao.example:8200")).is_ok());
        for bad in [
            "http://10.0.0.1:8200",
            "http://bao.example",
            "ftp://127.0.0.1",
            "https://u:p@bao.example",
            "not a url",
        ] {
            assert!(
                matches!(
                    TransitClient::new(cfg(bad)),
                    Err(ExternalError::Protocol(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn mount_and_prefix_make_the_base() {
        let mut c = cfg("https://bao.example/prefix/");
        c.mount = "/tenants/transit/".into();
        let client = TransitClient::new(c).map_err(|e| e.to_string()).unwrap();
        assert_eq!(
            client.inner.base.as_str(),
            "https://bao.example/prefix/v1/tenants/transit/"
        );
        let mut c = cfg("https://bao.example");
        c.mount = "../sys".into();
        assert!(TransitClient::new(c).is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let c = cfg("https://bao.example");
        assert!(!format!("{c:?}").contains("secret-token"));
        let client = TransitClient::new(c).map_err(|e| e.to_string()).unwrap();
        assert!(!format!("{client:?}").contains("secret-token"));
    }

    #[test]
    fn statuses_map_to_kinds() {
        let body = |t: &str| format!("{{\"errors\":[\"{t}\"]}}").into_bytes();
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        assert!(matches!(
            status_error(
                s(400),
                &body("encryption key not found"),
                "encrypt with key \"k\""
            ),
            ExternalError::KeyUnusable(_)
        ));
        assert!(matches!(
            status_error(
                s(400),
                &body("cipher: message authentication failed"),
                "decrypt/k"
            ),
            ExternalError::Protocol(_)
        ));
        assert!(matches!(
            status_error(s(403), &body("permission denied"), "decrypt with key \"k\""),
            ExternalError::KeyUnusable(_)
        ));
        assert!(matches!(
            status_error(s(503), &body("Vault is sealed"), "decrypt with key \"k\""),
            ExternalError::Unreachable(_)
        ));
        assert!(matches!(
            status_error(s(500), b"<html>", "decrypt with key \"k\""),
            ExternalError::Protocol(_)
        ));
        let multi = body("1 error occurred:\\n\\t* permission denied\\n\\n");
        assert_eq!(server_text(s(403), &multi), "permission denied");
        assert_eq!(
            server_text(s(400), b"Client sent an HTTP request to an HTTPS server.\n"),
            "Client sent an HTTP request to an HTTPS server."
        );
        assert_eq!(server_text(s(502), b"<html>bad</html>"), "Bad Gateway");
        let leaked = redact(
            status_error(s(400), &body("bad token s.abcdef"), "x"),
            "s.abcdef",
        );
        assert!(!leaked.to_string().contains("s.abcdef"), "{leaked}");
        let long = "x".repeat(5000);
        match status_error(s(500), &body(&long), "decrypt with key \"k\"") {
            ExternalError::Protocol(t) => assert!(t.len() < MAX_ERROR_TEXT + 50),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ciphertext_shape_is_checked() {
        assert!(is_transit_ciphertext("vault:v1:abc+/="));
        assert!(is_transit_ciphertext("vault:v12:abc"));
        for bad in [
            "vault:v:abc",
            "vault:v1:",
            "vault:1:abc",
            "v1:abc",
            "vault:v1:a\"b",
        ] {
            assert!(!is_transit_ciphertext(bad), "{bad}");
        }
    }
}
