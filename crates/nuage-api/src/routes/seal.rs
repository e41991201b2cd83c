//! Sealing: while the root key is sealed the server answers only health
//! probes, the seal status and the unseal call. Everything else is a 503
//! naming the reason, so nothing is served half-working.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nuage_core::model::kms::{SealStatus, UnsealRequest};
use nuage_core::ApiError;

use crate::ctx::Body;
use crate::problem::{Failure, HandlerResult, Problem};
use crate::state::AppState;

pub(crate) const OPEN_WHILE_SEALED: &[&str] = &[
    "/healthz",
    "/readyz",
    "/admin/v1/seal-status",
    "/admin/v1/unseal",
];

/// Layer: refuses every other route while the key service is sealed.
pub async fn sealed_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.kms.is_sealed() && !OPEN_WHILE_SEALED.contains(&req.uri().path()) {
        return Failure(
            ApiError::unavailable(
                "the server is sealed: an operator must unseal it (nuage admin unseal)",
            )
            .with_code("sealed")
            .with_retry_after(5),
        )
        .into_response();
    }
    next.run(req).await
}

fn status(state: &AppState) -> SealStatus {
    SealStatus {
        sealed: state.kms.is_sealed(),
        method: state.kms.seal_method().to_string(),
    }
}

#[utoipa::path(get, path = "/admin/v1/seal-status", tag = "operator",
    responses((status = 200, body = SealStatus)))]
pub async fn seal_status(State(state): State<AppState>) -> Json<SealStatus> {
    Json(status(&state))
}

/// Unseals the server with the operator passphrase (the passphrase is the
/// credential of this call).
#[utoipa::path(post, path = "/admin/v1/unseal", tag = "operator", request_body = UnsealRequest,
    responses((status = 200, body = SealStatus), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn unseal(
    State(state): State<AppState>,
    Body(body): Body<UnsealRequest>,
) -> HandlerResult<Json<SealStatus>> {
    let passphrase = zeroize::Zeroizing::new(body.passphrase);
    state.kms.unseal_with_passphrase(&passphrase).await?;
    tracing::info!("server unsealed through the unseal call");
    Ok(Json(status(&state)))
}
