//! The S3 listener's entry point. Like the REST pipeline it gives each
//! request an id (returned as `x-amz-request-id`), answers 503 while the key
//! service is sealed, and writes the audit entry before the response leaves:
//! if the entry cannot be written the client gets a 503 instead. It also
//! refuses, before the wire crate, XML bodies it would buffer too far and
//! presigned URLs that would live over 7 days ([`super::freshness`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};
use nuage_audit::log::AuditLog;
use nuage_audit::pending::Finished;
use nuage_iam::{Authenticator, Authorizer};
use s3s::host::{S3Host, VirtualHost};
use s3s::service::{S3Service, S3ServiceBuilder};

use super::auth::{Access, Auth, Seen};
use super::freshness::presigned_expiry;
use super::ops::Objects;
use crate::engine::Engine;
use crate::settings::{BucketSettings, CorsRule};

#[derive(Debug, Clone)]
pub struct S3Config {
    /// Returned by GetBucketLocation; clients sign with any region.
    pub region: String,
    /// Base domain of virtual-hosted addressing (`bucket.<domain>`).
    pub domain: Option<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            region: "us-east-1".into(),
            domain: Some("s3.localhost".into()),
        }
    }
}

/// Virtual-hosted addressing under one base domain. Unlike `s3s`'s own
/// parsers, a host that is not under the domain (another name for the
/// machine, `localhost`, …) is served path-style rather than refused.
struct Hosts {
    domain: String,
}

impl S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let bucket = name
            .strip_suffix(self.domain.as_str())
            .and_then(|h| h.strip_suffix('.'))
            .filter(|b| !b.is_empty());
        Ok(match bucket {
            Some(b) => VirtualHost::new(self.domain.as_str()).with_bucket(b),
            None => VirtualHost::new(name),
        })
    }
}

pub use nuage_audit::pending::AuditSlot as Slot;

/// Largest XML request body accepted (MaxMessageLengthExceeded beyond).
pub const MAX_XML_BODY: usize = 4 * 1024 * 1024;

/// Request facts the operations need, carried in the request extensions.
#[derive(Clone)]
pub struct ReqCtx {
    pub request_id: String,
    pub source: String,
    pub slot: Slot,
}

#[derive(Clone)]
pub struct S3Front {
    service: Arc<S3Service>,
    engine: Engine,
    audit: AuditLog,
    domain: Option<String>,
}

impl S3Front {
    pub fn new(
        engine: Engine,
        authn: Authenticator,
        authz: Arc<Authorizer>,
        audit: AuditLog,
        cfg: S3Config,
    ) -> S3Front {
        let seen = Seen::default();
        let domain = cfg
            .domain
            .as_deref()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        let mut b = S3ServiceBuilder::new(Objects::new(engine.clone(), authz, cfg.region.clone()));
        b.set_auth(Auth {
            authn,
            seen: seen.clone(),
        });
        b.set_access(Access { seen });
        // Our limits, not the wire crate's defaults: the largest legitimate
        // XML bodies (1,000 keys of DeleteObjects, 10,000 parts of a
        // Complete) stay well under 4 MiB.
        let mut limits = s3s::config::S3Config::default();
        limits.xml_max_body_size = MAX_XML_BODY;
        // A presigned URL dated further ahead is refused (skew, like
        // headers: see `freshness`).
        limits.presigned_url_max_skew_time_secs = 900;
        b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
            limits,
        ))));
        if let Some(domain) = &domain {
            b.set_host(Hosts {
                domain: domain.clone(),
            });
        }
        S3Front {
            service: Arc::new(b.build()),
            engine,
            audit,
            domain,
        }
    }

    /// The listener's application: every path goes to [`handle`].
    pub fn router(self) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }
}

fn xml_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
    );
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

/// The length a request declares, if it declares one.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether a request carries an XML body: a bucket subresource PUT,
/// DeleteObjects, CompleteMultipartUpload.
fn carries_xml(req: &Request) -> bool {
    let query = req.uri().query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    match *req.method() {
        http::Method::POST => has("delete") || has("uploadId"),
        http::Method::PUT => {
            !has("uploadId")
                && [
                    "tagging",
                    "cors",
                    "lifecycle",
                    "versioning",
                    "acl",
                    "encryption",
                    "policy",
                ]
                .iter()
                .any(|n| has(n))
        }
        _ => false,
    }
}

/// The bucket a request addresses, virtual-hosted or path-style.
fn bucket_of(domain: Option<&str>, headers: &HeaderMap, path: &str) -> Option<String> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if let (Some(host), Some(domain)) = (host, domain) {
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if let Some(b) = name
            .to_ascii_lowercase()
            .strip_suffix(domain)
            .and_then(|h| h.strip_suffix('.'))
            .filter(|b| !b.is_empty())
        {
            return Some(b.to_string());
        }
    }
    path.trim_start_matches('/')
        .split('/')
        .next()
        .filter(|b| !b.is_empty())
        .map(str::to_string)
}

/// The bucket's CORS rule for `origin` and `method`, if any.
async fn cors_rule(
    front: &S3Front,
    bucket: &str,
    origin: &str,
    method: &str,
    headers: &[String],
) -> Option<CorsRule> {
    let b = front.engine.store().bucket_get(bucket).await.ok()??;
    let s = BucketSettings::of(&b).ok()?;
    s.cors_match(origin, method, headers).cloned()
}

fn allow_origin(rule: &CorsRule, origin: &str) -> String {
    if rule.allowed_origins.iter().any(|o| o == "*") {
        "*".into()
    } else {
        origin.to_string()
    }
}

/// Answers a CORS preflight from the bucket's rules (no credentials: a
/// browser sends none with a preflight).
async fn preflight(
    front: &S3Front,
    headers: &HeaderMap,
    bucket: Option<String>,
    rid: &str,
) -> Response {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(origin), Some(method)) = (get("origin"), get("access-control-request-method")) else {
        return xml_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Insufficient information. Origin request header needed.",
            rid,
        );
    };
    let asked: Vec<String> = get("access-control-request-headers")
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    let rule = match &bucket {
        Some(b) => cors_rule(front, b, &origin, &method, &asked).await,
        None => None,
    };
    let Some(rule) = rule else {
        return xml_error(
            StatusCode::FORBIDDEN,
            "AccessForbidden",
            "CORSResponse: This CORS request is not allowed. This is usually because the \
             evalution of Origin, request method / Access-Control-Request-Method or \
             Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
            rid,
        );
    };
    let mut r = Response::new(axum::body::Body::empty());
    let h = r.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("access-control-allow-origin", allow_origin(&rule, &origin));
    put(
        "access-control-allow-methods",
        rule.allowed_methods.join(", "),
    );
    if !asked.is_empty() {
        put("access-control-allow-headers", asked.join(", "));
    }
    if !rule.expose_headers.is_empty() {
        put(
            "access-control-expose-headers",
            rule.expose_headers.join(", "),
        );
    }
    if let Some(age) = rule.max_age_seconds {
        put("access-control-max-age", age.to_string());
    }
    put(
        "vary",
        "Origin, Access-Control-Request-Headers, Access-Control-Request-Method".into(),
    );
    r
}

async fn handle(State(front): State<S3Front>, req: Request) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let bucket = bucket_of(front.domain.as_deref(), req.headers(), req.uri().path());
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string());

    let slot = Slot::default();
    let mut response = if req.method() == http::Method::OPTIONS {
        slot.update(|a| a.action = Some("s3.cors_preflight".into()));
        preflight(&front, req.headers(), bucket.clone(), &request_id).await
    } else if carries_xml(&req) && declared_length(&req).is_none_or(|l| l > MAX_XML_BODY as u64) {
        // Refused before the wire crate buffers it (which would answer a
        // 500 for a body over its limit). Like S3, an XML body must
        // declare its length: a chunked one is refused before any is read.
        slot.update(|a| a.decision = Some("error"));
        if declared_length(&req).is_none() {
            xml_error(
                StatusCode::LENGTH_REQUIRED,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
                &request_id,
            )
        } else {
            xml_error(
                StatusCode::BAD_REQUEST,
                "MaxMessageLengthExceeded",
                "Your request was too big.",
                &request_id,
            )
        }
    } else if let Err(e) = presigned_expiry(req.uri().query()) {
        // A presigned URL that would live over 7 days (or expired before
        // it was made): refused before any key is looked up.
        slot.update(|a| a.decision = Some("error"));
        let status = e.status_code().unwrap_or(StatusCode::BAD_REQUEST);
        xml_error(
            status,
            e.code().as_str(),
            e.message().unwrap_or(""),
            &request_id,
        )
    } else if front.engine.kms().is_sealed() {
        slot.update(|a| a.decision = Some("error"));
        xml_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is sealed: an operator must unseal it",
            &request_id,
        )
    } else {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ReqCtx {
            request_id: request_id.clone(),
            source: source.clone(),
            slot: slot.clone(),
        });
        let req = http::Request::from_parts(parts, s3s::Body::http_body_unsync(body));
        match front.service.call(req).await {
            Ok(r) => {
                // The wire crate's own log lines are filtered out (see the
                // binary's `init_logs`): a server error is reported here.
                // NotImplemented is the client's asking, anonymous or not.
                let status = r.status();
                if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
                    tracing::error!(
                        request_id = %request_id,
                        status = status.as_u16(),
                        %method,
                        %path,
                        "S3 request answered with a server error"
                    );
                } else if status.is_client_error() || status.is_server_error() {
                    tracing::debug!(
                        request_id = %request_id,
                        status = status.as_u16(),
                        %method,
                        %path,
                        "S3 request refused"
                    );
                }
                r.map(axum::body::Body::new)
            }
            Err(e) => {
                tracing::error!(error = ?e, "S3 request failed");
                xml_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                    &request_id,
                )
            }
        }
    };

    let (log_id, record) = slot.finish(Finished {
        request_id: &request_id,
        source: &source,
        method: &method,
        path: &path,
        status: response.status().as_u16(),
        default_action: format!("s3 {method}"),
    });
    if let Err(e) = front.audit.record(&log_id, record).await {
        tracing::error!(error = %e.detail, request_id = %request_id, "audit entry not written; answering 503");
        response = xml_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the audit log could not record this request; retry later",
            &request_id,
        );
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amz-request-id", v);
    }
    // A cross-origin request gets the CORS headers of the rule it matches.
    if let (Some(origin), Some(bucket)) = (origin, bucket) {
        if method != "OPTIONS" {
            if let Some(rule) = cors_rule(&front, &bucket, &origin, &method, &[]).await {
                let h = response.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&allow_origin(&rule, &origin)) {
                    h.insert("access-control-allow-origin", v);
                }
                if let Ok(v) = HeaderValue::from_str(&rule.expose_headers.join(", ")) {
                    if !rule.expose_headers.is_empty() {
                        h.insert("access-control-expose-headers", v);
                    }
                }
                h.insert("vary", HeaderValue::from_static("Origin"));
            }
        }
    }
    response
}
