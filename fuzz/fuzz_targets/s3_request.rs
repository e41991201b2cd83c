//! Whole S3 requests through the real `s3s` pipeline, as the S3 listener
//! runs it, minus the database: routing, header and query parsing, SigV4
//! (headers and presigned URLs), aws-chunked and checksummed bodies, POST
//! forms and XML bodies. The service's secret lookup returns a fixed key
//! (as `s3::auth` does after the store), access is open so unsigned
//! requests reach the operations too, and the operations are s3s's defaults
//! (NotImplemented) except the ones that read a body, which drain it.
//!
//! Input format, so that the seed corpus is readable requests:
//!
//! ```text
//! METHOD /path?query [sign]
//! Header: value
//!
//! body
//! ```
//!
//! With `sign`, the harness signs the request with SigV4 (now, the fixed
//! key, every header it has) so the fuzzer gets past the signature check to
//! the body decoders. `NUAGE_FUZZ_VERBOSE=1` prints s3s's log and each
//! answer, to see why an input fails. No request may panic, and every
//! refusal must be a proper S3 error document. (Not asserted: that no
//! refusal is a 500. s3s answers InternalError when the body stream fails
//! while it buffers an XML body, e.g. a bad aws-chunked chunk signature.)
#![no_main]

#[global_allocator]
static ALLOC: nuage_fuzz::Limited = nuage_fuzz::Limited;

use bytes::Bytes;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{GetObjectInput, GetObjectOutput, PutObjectInput, PutObjectOutput, StreamingBlob};
use s3s::dto::{UploadPartInput, UploadPartOutput};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

const ACCESS_KEY: &str = "AKFUZZ";
const SECRET: &str = "fuzz-secret-key";
const REGION: &str = "us-east-1";
/// What the default GetObject pretends the object's size is, for Range.
const OBJECT_SIZE: u64 = 1000;

struct Defaults;

async fn drain(body: Option<StreamingBlob>) {
    if let Some(mut b) = body {
        while let Some(Ok(_)) = b.next().await {}
    }
}

#[async_trait::async_trait]
impl S3 for Defaults {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        drain(req.input.body).await;
        Err(s3_error!(NotImplemented))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        drain(req.input.body).await;
        Err(s3_error!(NotImplemented))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        if let Some(r) = req.input.range {
            if let Ok(r) = r.check(OBJECT_SIZE) {
                assert!(r.start < r.end && r.end <= OBJECT_SIZE, "range {r:?}");
            }
        }
        Err(s3_error!(NotImplemented))
    }
}

struct FixedKey;

#[async_trait::async_trait]
impl S3Auth for FixedKey {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == ACCESS_KEY {
            Ok(SecretKey::from(SECRET))
        } else {
            Err(s3_error!(InvalidAccessKeyId))
        }
    }
}

struct Open;

#[async_trait::async_trait]
impl S3Access for Open {
    async fn check(&self, _cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        Ok(())
    }
}

fn service() -> &'static (S3Service, tokio::runtime::Runtime) {
    static S: OnceLock<(S3Service, tokio::runtime::Runtime)> = OnceLock::new();
    S.get_or_init(|| {
        if std::env::var_os("NUAGE_FUZZ_VERBOSE").is_some() {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .init();
        }
        let mut b = S3ServiceBuilder::new(Defaults);
        b.set_auth(FixedKey);
        b.set_access(Open);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (b.build(), rt)
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SigV4's URI encoding (RFC 3986 unreserved characters kept).
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'~' | b'.' => {
                out.push(char::from(b))
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Adds `x-amz-date`, `x-amz-content-sha256` (if missing) and a SigV4
/// `Authorization` header over every header of the request.
fn sign(method: &Method, path: &str, query: &str, headers: &mut HeaderMap, body: &[u8]) {
    headers.remove(http::header::AUTHORIZATION);
    let now = time::OffsetDateTime::now_utc();
    let date = format!(
        "{:04}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        now.hour(),
        now.minute(),
        now.second()
    );
    headers.insert("x-amz-date", HeaderValue::from_str(&stamp).expect("ascii"));
    if !headers.contains_key("x-amz-content-sha256") {
        let h = HeaderValue::from_str(&sha256_hex(body)).expect("hex");
        headers.insert("x-amz-content-sha256", h);
    }
    let Some(payload) = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let payload = payload.to_owned();

    let path = urlencoding::decode(path)
        .map(|p| p.into_owned())
        .unwrap_or_default();
    let mut qs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    qs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut qs: Vec<(String, String)> = qs
        .iter()
        .map(|(n, v)| (uri_encode(n, true), uri_encode(v, true)))
        .collect();
    qs.sort_by(|a, b| a.0.cmp(&b.0));
    let qs: Vec<String> = qs.iter().map(|(n, v)| format!("{n}={v}")).collect();

    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let signed = names.join(";");
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}",
        uri_encode(&path, false),
        qs.join("&")
    );
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut k = hmac(format!("AWS4{SECRET}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={signature}"
    );
    if let Ok(v) = HeaderValue::from_str(&auth) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
}

/// Builds the request the fuzz input describes; `None` for what hyper
/// would already have refused (a bad method, URI or header).
fn request(data: &[u8]) -> Option<Request<s3s::Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = std::str::from_utf8(lines.next()?).ok()?;
    let mut words = first.split(' ');
    let method = Method::from_bytes(words.next()?.as_bytes()).ok()?;
    let target = words.next()?;
    let signed = words.next() == Some("sign");
    let uri: http::Uri = target.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    // hyper frames the body by Content-Length before s3s sees it (or the
    // body is chunked and the header absent): a given length is the real one.
    if headers.contains_key(http::header::CONTENT_LENGTH) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if signed {
        sign(
            &method,
            uri.path(),
            uri.query().unwrap_or(""),
            &mut headers,
            body,
        );
    }
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(s3s::Body::from(Bytes::copy_from_slice(body)))
        .ok()?;
    *req.headers_mut() = headers;
    Some(req)
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else { return };
    let head = req.method() == Method::HEAD;
    let (svc, rt) = service();
    rt.block_on(async {
        let resp = svc.call(req).await.expect("s3s answers every request");
        let status = resp.status().as_u16();
        let body = BodyExt::collect(resp.into_body()).await;
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        if std::env::var_os("NUAGE_FUZZ_VERBOSE").is_some() {
            eprintln!("{status} {}", String::from_utf8_lossy(&body));
        }
        assert!((200..600).contains(&status), "status {status}");
        if status >= 400 && !head {
            let xml = std::str::from_utf8(&body).expect("UTF-8 error body");
            assert!(
                xml.contains("<Error><Code>"),
                "status {status} without an S3 error: {xml}"
            );
        }
    });
});
