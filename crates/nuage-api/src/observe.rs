//! The outermost layer of every request: gives it an id and a tracing span,
//! renders errors as problems, records metrics, and writes the audit entry
//! *before* the response leaves. If the audit entry cannot be written the
//! client gets a 503 instead of its answer: no unaudited decision escapes.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{header, HeaderValue};
use nuage_audit::pending::Finished;
use nuage_core::ApiError;
use tracing::Instrument;

use crate::metrics::RouteLabels;
use crate::problem::{self, ErrorMarker};
use crate::state::AppState;

pub use nuage_audit::pending::{AuditInfo, AuditSlot};

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

#[derive(Clone, Debug)]
pub struct SourceAddr(pub String);

/// Routes that are not decisions: probes and the public API description.
fn unaudited(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json"
    )
}

pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(SourceAddr(source.clone()));

    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    let mut response = next.run(req).instrument(span.clone()).await;

    let status = response.status();
    if let Some(ErrorMarker(err)) = response.extensions_mut().remove::<ErrorMarker>() {
        response = problem::render(&err, &request_id);
    } else if (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes() != problem::CONTENT_TYPE.as_bytes())
    {
        response = problem::render(&problem::from_status(status), &request_id);
    }

    if !unaudited(&path) {
        let (log_id, record) = slot.finish(Finished {
            request_id: &request_id,
            source: &source,
            method: &method,
            path: &path,
            status: response.status().as_u16(),
            default_action: format!("{method} {route}"),
        });
        if let Err(e) = state.audit.record(&log_id, record).await {
            span.in_scope(|| tracing::error!(error = %e, "audit entry not written; answering 503"));
            response = problem::render(
                &ApiError::unavailable("the audit log could not record this request; retry later"),
                &request_id,
            );
        }
    }

    let elapsed = started.elapsed();
    let status = response.status();
    state.metrics.observe(
        RouteLabels {
            listener: format!("{:?}", state.realm).to_lowercase(),
            method: method.clone(),
            route,
            status: status.as_u16(),
        },
        elapsed.as_secs_f64(),
    );
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_us = elapsed.as_micros() as u64,
            "request done"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
