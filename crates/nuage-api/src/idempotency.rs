//! `Idempotency-Key` for mutations: the first successful answer to a key is
//! kept (24 h) and replayed to retries of the same request by the same
//! bearer; reusing a key for a different request is a 422. Answers that
//! carry a secret (new tokens, sessions) are marked [`Sensitive`] and never
//! stored, so no secret lands in the database in clear.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};
use nuage_core::time::now_ms;
use nuage_core::ApiError;
use nuage_store::StoredResponse;
use sha2::{Digest, Sha256};

use crate::problem::{ErrorMarker, Failure};
use crate::state::AppState;

/// Response extension: this answer holds a secret; do not keep it.
#[derive(Clone, Copy, Debug)]
pub struct Sensitive;

pub const HEADER: &str = "idempotency-key";
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
        _ => {
            return Failure(ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ))
            .into_response()
        }
    };
    let Some(bearer) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string())
    else {
        return next.run(req).await;
    };
    let scope = hex::encode(Sha256::digest(format!("idempotency:{bearer}").as_bytes()));
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return Failure(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds the configured limit",
            ))
            .into_response()
        }
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b" ");
    h.update(parts.uri.path().as_bytes());
    h.update(b"\n");
    h.update(&bytes);
    let request_hash = hex::encode(h.finalize());

    match state.store.idempotency_get(&scope, &key).await {
        Ok(Some(stored)) => {
            if stored.request_hash != request_hash {
                return Failure(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                ))
                .into_response();
            }
            if let Err(e) = state.authn.authenticate(&bearer, state.realm).await {
                return Failure(e).into_response();
            }
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut r = (status, stored.body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Ok(None) => {}
        Err(e) => return Failure(e).into_response(),
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let keep = response.status().is_success()
        && response.extensions().get::<ErrorMarker>().is_none()
        && response.extensions().get::<Sensitive>().is_none();
    if !keep {
        return response;
    }
    let (rparts, rbody) = response.into_parts();
    let Ok(rbytes) = to_bytes(rbody, usize::MAX).await else {
        return Failure(ApiError::internal("cannot buffer the response")).into_response();
    };
    let stored = StoredResponse {
        request_hash,
        status: rparts.status.as_u16(),
        body: String::from_utf8_lossy(&rbytes).into_owned(),
    };
    if let Err(e) = state
        .store
        .idempotency_put(&scope, &key, &stored, now_ms())
        .await
    {
        tracing::warn!(error = %e, "idempotency key not stored");
    }
    Response::from_parts(rparts, Body::from(rbytes))
}
