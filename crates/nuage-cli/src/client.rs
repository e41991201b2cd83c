//! HTTP access to a nuage listener, and the errors a user can act on.
//!
//! Every failure is turned into one of a few error types here so that the
//! top level can print a single line and choose an exit status: API problems
//! (RFC 9457 bodies), unreachable servers, and a missing login. Paths are
//! built from segments so names are always percent-encoded.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{header, Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An RFC 9457 problem returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiProblem {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub request_id: String,
}

impl fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = if self.detail.is_empty() {
            &self.title
        } else {
            &self.detail
        };
        write!(f, "{detail} (")?;
        match (self.code.is_empty(), self.request_id.is_empty()) {
            (false, false) => write!(f, "{}, request {}", self.code, self.request_id)?,
            (false, true) => write!(f, "{}", self.code)?,
            (true, false) => write!(f, "HTTP {}, request {}", self.status, self.request_id)?,
            (true, true) => write!(f, "HTTP {}", self.status)?,
        }
        write!(f, ")")
    }
}

impl std::error::Error for ApiProblem {}

/// A response that is an error but not a problem body (a proxy, say).
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub url: String,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answered HTTP {} without a nuage problem body; is this a nuage server?",
            self.url, self.status
        )
    }
}

impl std::error::Error for HttpError {}

/// The server could not be reached or spoke something else than HTTP.
#[derive(Debug)]
pub struct Unreachable {
    pub url: String,
    pub reason: String,
    pub admin: bool,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let login = if self.admin {
            "nuage login --admin --url <URL>"
        } else {
            "nuage login --url <URL>"
        };
        let lower = self.reason.to_ascii_lowercase();
        if lower.contains("certificate") || lower.contains("tls") {
            write!(
                f,
                "could not reach {} ({}); for a private CA run `{login} --ca-cert <FILE>`",
                self.url, self.reason
            )
        } else {
            write!(
                f,
                "could not reach {} ({}); check the address or run `{login}`",
                self.url, self.reason
            )
        }
    }
}

impl std::error::Error for Unreachable {}

/// No token is known for the listener a command needs.
#[derive(Debug)]
pub struct NotLoggedIn {
    pub admin: bool,
}

impl fmt::Display for NotLoggedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.admin {
            write!(
                f,
                "not logged in to the operator API: run `nuage login --admin` (or set NUAGE_ADMIN_TOKEN)"
            )
        } else {
            write!(f, "not logged in: run `nuage login` (or set NUAGE_TOKEN)")
        }
    }
}

impl std::error::Error for NotLoggedIn {}

/// The URL as it may be shown: without any user info a user put in it.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    let text = shown.to_string();
    match text.strip_suffix('/') {
        Some(t) if shown.path() == "/" => t.to_string(),
        _ => text,
    }
}

/// Parses a server address given by the user, accepting only HTTP(S).
pub fn parse_base_url(s: &str) -> Result<Url> {
    let url = Url::parse(s.trim()).with_context(|| {
        format!("{s:?} is not a URL; give one such as https://nuage.example.com:8443")
    })?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        _ => bail!("{s:?} is not an http:// or https:// URL"),
    }
}

/// A query string under construction; unset options are simply left out.
#[derive(Debug, Default, Clone)]
pub struct Query(Vec<(&'static str, String)>);

impl Query {
    pub fn new() -> Self {
        Query::default()
    }

    pub fn set(&mut self, key: &'static str, value: impl ToString) -> &mut Self {
        self.0.retain(|(k, _)| *k != key);
        self.0.push((key, value.to_string()));
        self
    }

    pub fn opt<T: ToString>(&mut self, key: &'static str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }
}

/// A page of a list, as returned, plus its items and continuation.
#[derive(Debug)]
pub struct Listing {
    pub raw: Value,
    pub items: Vec<Value>,
    pub next_page_token: Option<String>,
}

/// A client of one listener (tenant or operator) with one credential.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    /// Like `http` without the read timeout: reqwest counts it from the
    /// start of the request, so it would cut off a long upload (and the
    /// server's import of it) that is progressing fine.
    uploads: reqwest::Client,
    base: Url,
    token: Option<String>,
    /// The extra CA certificates (PEM) given at login, for connections
    /// made without reqwest (the console's WebSocket).
    ca_pem: Option<Vec<u8>>,
    admin: bool,
}

impl Api {
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
        admin: bool,
    ) -> Result<Self> {
        let base = parse_base_url(base)?;
        let mut roots = Vec::new();
        let mut ca_pem = None;
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("could not read the CA certificate {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            roots = certs;
            ca_pem = Some(pem);
        }
        let builder = || {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("nuage-cli/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10));
            for cert in &roots {
                b = b.add_root_certificate(cert.clone());
            }
            b
        };
        let http = builder()
            .read_timeout(Duration::from_secs(120))
            .build()
            .context("could not set up HTTP")?;
        let uploads = builder()
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .context("could not set up HTTP")?;
        Ok(Api {
            http,
            uploads,
            base,
            token,
            ca_pem,
            admin,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// The same listener with another credential.
    pub fn with_token(&self, token: Option<String>) -> Api {
        Api {
            token,
            ..self.clone()
        }
    }

    pub fn url(&self, path: &[&str], query: &Query) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| anyhow!("{} cannot be a base URL", display_url(&self.base)))?;
            segments.pop_if_empty();
            for seg in path {
                if seg.is_empty() || *seg == "." || *seg == ".." {
                    bail!("{seg:?} is not a valid name");
                }
                segments.push(seg);
            }
        }
        if !query.0.is_empty() {
            url.query_pairs_mut().extend_pairs(query.0.iter());
        }
        Ok(url)
    }

    async fn send(
        &self,
        method: Method,
        path: &[&str],
        query: &Query,
        body: Option<Vec<u8>>,
        if_match: Option<i64>,
    ) -> Result<reqwest::Response> {
        let url = self.url(path, query)?;
        let mut req = self.request(&self.http, method, &url);
        if let Some(generation) = if_match {
            req = req.header(header::IF_MATCH, format!("\"{generation}\""));
        }
        if let Some(body) = body {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.failure(&url, resp).await)
    }

    fn request(
        &self,
        http: &reqwest::Client,
        method: Method,
        url: &Url,
    ) -> reqwest::RequestBuilder {
        let req = http
            .request(method, url.clone())
            .header(header::ACCEPT, "application/json");
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    fn unreachable(&self, err: &reqwest::Error) -> anyhow::Error {
        let reason = if err.is_timeout() {
            "timed out".to_string()
        } else {
            root_cause(err)
        };
        self.unreachable_because(reason)
    }

    /// [`Unreachable`] for a connection made without reqwest.
    pub fn unreachable_because(&self, reason: String) -> anyhow::Error {
        Unreachable {
            url: display_url(&self.base),
            reason,
            admin: self.admin,
        }
        .into()
    }

    async fn failure(&self, url: &Url, resp: reqwest::Response) -> anyhow::Error {
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        error_from_body(url, status, &bytes)
    }

    async fn json(resp: reqwest::Response) -> Result<Value> {
        let bytes = resp.bytes().await.context("the response was cut short")?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).context("the server answered with invalid JSON")
    }

    fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>> {
        serde_json::to_vec(body).context("could not encode the request")
    }

    pub async fn get(&self, path: &[&str], query: &Query) -> Result<Value> {
        Self::json(self.send(Method::GET, path, query, None, None).await?).await
    }

    pub async fn post<B: Serialize>(&self, path: &[&str], body: &B) -> Result<Value> {
        let body = Self::encode(body)?;
        Self::json(
            self.send(Method::POST, path, &Query::new(), Some(body), None)
                .await?,
        )
        .await
    }

    pub async fn post_empty(&self, path: &[&str]) -> Result<Value> {
        Self::json(
            self.send(Method::POST, path, &Query::new(), None, None)
                .await?,
        )
        .await
    }

    /// A POST without a body, with a query (`stop?force=true`).
    pub async fn post_query(&self, path: &[&str], query: &Query) -> Result<Value> {
        Self::json(self.send(Method::POST, path, query, None, None).await?).await
    }

    pub async fn put<B: Serialize>(&self, path: &[&str], body: &B) -> Result<Value> {
        let body = Self::encode(body)?;
        Self::json(
            self.send(Method::PUT, path, &Query::new(), Some(body), None)
                .await?,
        )
        .await
    }

    pub async fn patch<B: Serialize>(
        &self,
        path: &[&str],
        body: &B,
        if_match: Option<i64>,
    ) -> Result<Value> {
        let body = Self::encode(body)?;
        let resp = self
            .send(Method::PATCH, path, &Query::new(), Some(body), if_match)
            .await?;
        Self::json(resp).await
    }

    pub async fn delete(&self, path: &[&str], if_match: Option<i64>) -> Result<Value> {
        let resp = self
            .send(Method::DELETE, path, &Query::new(), None, if_match)
            .await?;
        Self::json(resp).await
    }

    /// One page, or every page when `all` is set (the items are then merged
    /// into a single `{ "items": [...] }`).
    pub async fn list(
        &self,
        path: &[&str],
        query: &Query,
        page: &crate::commands::PageArgs,
    ) -> Result<Listing> {
        let mut query = query.clone();
        query.opt("limit", page.limit);
        query.opt("page_token", page.page_token.clone());
        let mut items = Vec::new();
        loop {
            let raw = self.get(path, &query).await?;
            let page_items = raw
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| anyhow!("the server answered a list without items"))?;
            let next = raw
                .get("next_page_token")
                .and_then(Value::as_str)
                .map(str::to_string);
            if !page.all {
                return Ok(Listing {
                    raw,
                    items: page_items,
                    next_page_token: next,
                });
            }
            items.extend(page_items);
            match next {
                Some(token) => {
                    query.set("page_token", token);
                }
                None => {
                    return Ok(Listing {
                        raw: serde_json::json!({ "items": items }),
                        items,
                        next_page_token: None,
                    })
                }
            }
        }
    }

    /// PUTs a file as `application/octet-stream`, read and sent a chunk at
    /// a time so that a disk image of any size never sits in memory;
    /// `sent` is told the running total after each chunk.
    pub async fn upload(
        &self,
        path: &[&str],
        file: tokio::fs::File,
        len: u64,
        mut sent: impl FnMut(u64) + Send + 'static,
    ) -> Result<Value> {
        use futures::StreamExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let url = self.url(path, &Query::new())?;
        let total = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&total);
        let chunks =
            tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map(move |chunk| {
                if let Ok(c) = &chunk {
                    let n = counted.fetch_add(c.len() as u64, Ordering::Relaxed) + c.len() as u64;
                    sent(n);
                }
                chunk
            });
        let resp = self
            .request(&self.uploads, Method::PUT, &url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => return Err(self.unreachable(&e)),
            // The server may answer and close before it has the whole body
            // (a refusal that needs no file); the client then only sees
            // the broken connection, never the answer.
            Err(e) => bail!(
                "the connection broke after {} of {} bytes ({})",
                total.load(Ordering::Relaxed),
                len,
                root_cause(&e)
            ),
        };
        if !resp.status().is_success() {
            return Err(self.failure(&url, resp).await);
        }
        Self::json(resp).await
    }

    /// Streams a body to `out` without holding it in memory; returns bytes written.
    pub async fn download(&self, path: &[&str], query: &Query, out: &mut dyn Write) -> Result<u64> {
        let mut resp = self.send(Method::GET, path, query, None, None).await?;
        let mut written = 0u64;
        while let Some(chunk) = resp.chunk().await.context("the download was cut short")? {
            out.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        out.flush()?;
        Ok(written)
    }
}

/// The error of a failed request: the API's problem, or the status alone
/// when the body is no problem.
pub fn error_from_body(url: &Url, status: StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ApiProblem>(body) {
        Ok(mut problem) if !problem.code.is_empty() || !problem.detail.is_empty() => {
            if problem.status == 0 {
                problem.status = status.as_u16();
            }
            problem.into()
        }
        _ => HttpError {
            status,
            url: display_url(url),
        }
        .into(),
    }
}

/// The innermost cause of a transport error, which is the informative one
/// ("Connection refused", "invalid peer certificate: UnknownIssuer").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: &str) -> ApiProblem {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn problem_line() {
        let p = problem(
            r#"{"type":"urn:nuage:problem:not_found","title":"Not Found","status":404,
                "detail":"project \"web\" not found","code":"not_found","request_id":"req_01"}"#,
        );
        assert_eq!(
            p.to_string(),
            r#"project "web" not found (not_found, request req_01)"#
        );
    }

    #[test]
    fn problem_line_falls_back_to_title_and_status() {
        let p = problem(r#"{"title":"Bad Gateway","status":502}"#);
        assert_eq!(p.to_string(), "Bad Gateway (HTTP 502)");
        let p = problem(r#"{"detail":"slow down","status":429,"request_id":"req_9"}"#);
        assert_eq!(p.to_string(), "slow down (HTTP 429, request req_9)");
    }

    #[test]
    fn not_logged_in_names_the_command() {
        assert!(NotLoggedIn { admin: false }
            .to_string()
            .contains("run `nuage login`"));
        assert!(NotLoggedIn { admin: true }
            .to_string()
            .contains("nuage login --admin"));
    }

    #[test]
    fn unreachable_suggests_login_url() {
        let e = Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "Connection refused (os error 111)".into(),
            admin: false,
        };
        let line = e.to_string();
        assert!(line.contains("http://127.0.0.1:1"), "{line}");
        assert!(line.contains("nuage login --url"), "{line}");
    }

    #[test]
    fn urls_are_built_from_encoded_segments() {
        let api = Api::new("https://nuage.example/base/", None, None, false).unwrap();
        let mut q = Query::new();
        q.set("principal", "user:al ice").opt("limit", Some(5));
        let url = api
            .url(
                &["v1", "orgs", "acme", "groups", "g/x", "members", "user:bob"],
                &q,
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://nuage.example/base/v1/orgs/acme/groups/g%2Fx/members/user:bob?principal=user%3Aal+ice&limit=5"
        );
        assert!(api.url(&["v1", "orgs", ".."], &Query::new()).is_err());
        assert!(api.url(&["v1", "orgs", ""], &Query::new()).is_err());
    }

    #[test]
    fn shown_urls_drop_user_info() {
        let url = Url::parse("https://bob:hunter2@nuage.example/v1/me?x=1").unwrap();
        assert_eq!(display_url(&url), "https://nuage.example/v1/me");
    }

    #[test]
    fn only_http_urls() {
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("nuage.example").is_err());
        assert!(parse_base_url("https://nuage.example:8443").is_ok());
    }
}
