//! RFC 9457 problem details. Handlers return [`ApiError`]; the error travels
//! in the response extensions and the observe layer renders it with the
//! request id, so every error — ours, an extractor's or axum's own — has the
//! same shape.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use nuage_core::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine code (`not_found`, `already_exists`, `invalid_name` …).
    pub code: String,
    pub request_id: String,
}

/// Marker carrying the error to the observe layer.
#[derive(Debug, Clone)]
pub struct ErrorMarker(pub ApiError);

/// Wrapper so handlers can return `Result<_, ApiError>` through `?`.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut r = self.0.status.into_response();
        if let Some(secs) = self.0.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r.extensions_mut().insert(ErrorMarker(self.0));
        r
    }
}

pub type HandlerResult<T> = Result<T, Failure>;

/// A generic error for responses produced without an [`ApiError`] (axum's
/// 405, a body-limit 413 …).
pub fn from_status(status: StatusCode) -> ApiError {
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    ApiError::new(
        status,
        code,
        status.canonical_reason().unwrap_or("error").to_string(),
    )
}

pub fn render(err: &ApiError, request_id: &str) -> Response {
    let body = Problem {
        kind: format!("urn:nuage:problem:{}", err.code),
        title: err.status.canonical_reason().unwrap_or("Error").to_string(),
        status: err.status.as_u16(),
        detail: err.detail.clone(),
        code: err.code.to_string(),
        request_id: request_id.to_string(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = (err.status, bytes).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Some(secs) = err.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}
