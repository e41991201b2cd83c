//! The S3 listener's entry point. Like the REST pipeline it gives each
//! request an id (returned as `x-amz-request-id`), answers 503 while the key
//! service is sealed, and writes the audit entry before the response leaves:
//! if the entry cannot be written the client gets a 503 instead.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode};
use nuage_audit::log::AuditLog;
use nuage_audit::pending::Finished;
use nuage_iam::{Authenticator, Authorizer};
use s3s::host::{S3Host, VirtualHost};
use s3s::service::{S3Service, S3ServiceBuilder};

use super::auth::{Access, Auth, Seen};
use super::ops::Objects;
use crate::engine::Engine;

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
        let mut b = S3ServiceBuilder::new(Objects::new(engine.clone(), authz, cfg.region.clone()));
        b.set_auth(Auth {
            authn,
            seen: seen.clone(),
        });
        b.set_access(Access { seen });
        if let Some(domain) = cfg.domain {
            b.set_host(Hosts {
                domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            });
        }
        S3Front {
            service: Arc::new(b.build()),
            engine,
            audit,
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

async fn handle(State(front): State<S3Front>, req: Request) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string());

    let slot = Slot::default();
    let mut response = if front.engine.kms().is_sealed() {
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
            Ok(r) => r.map(axum::body::Body::new),
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
    response
}
