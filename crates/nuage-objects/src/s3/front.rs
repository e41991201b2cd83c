//! The S3 listener's entry point. Like the REST pipeline it gives each
//! request an id (returned as `x-amz-request-id`), answers 503 while the key
//! service is sealed, and writes the audit entry before the response leaves:
//! if the entry cannot be written the client gets a 503 instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode};
use nuage_audit::log::{AuditLog, PLATFORM_LOG};
use nuage_core::model::AuditRecord;
use nuage_core::time::now_ms;
use nuage_iam::{Authenticator, Authorizer};
use s3s::service::{S3Service, S3ServiceBuilder};

use super::auth::{Access, Auth, Seen};
use super::ops::Objects;
use crate::engine::Engine;

#[derive(Debug, Clone)]
pub struct S3Config {
    /// Returned by GetBucketLocation; clients sign with any region.
    pub region: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            region: "us-east-1".into(),
        }
    }
}

/// What a request learnt on its way, for its audit entry.
#[derive(Debug, Default)]
pub struct AuditInfo {
    pub log_id: Option<String>,
    pub principal_id: Option<String>,
    pub principal_name: String,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<&'static str>,
    pub policies: Vec<String>,
    pub details: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<AuditInfo>>);

impl Slot {
    pub fn update(&self, f: impl FnOnce(&mut AuditInfo)) {
        if let Ok(mut g) = self.0.lock() {
            f(&mut g);
        }
    }
}

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
        let mut b = S3ServiceBuilder::new(Objects::new(engine.clone(), authz, cfg.region));
        b.set_auth(Auth {
            authn,
            seen: seen.clone(),
        });
        b.set_access(Access { seen });
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

    let info = slot
        .0
        .lock()
        .map(|mut g| std::mem::take(&mut *g))
        .unwrap_or_default();
    let status = response.status();
    let decision = info
        .decision
        .unwrap_or(if status.is_success() { "none" } else { "error" });
    let record = AuditRecord {
        time: now_ms(),
        request_id: request_id.clone(),
        principal: info.principal_id.unwrap_or_else(|| "anonymous".to_string()),
        principal_name: info.principal_name,
        source,
        method: method.clone(),
        path,
        action: info.action.unwrap_or_else(|| format!("s3 {method}")),
        resource: info.resource.unwrap_or_default(),
        decision: decision.to_string(),
        policies: info.policies,
        status: status.as_u16(),
        details: info.details,
    };
    let log_id = info
        .log_id
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| PLATFORM_LOG.to_string());
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
