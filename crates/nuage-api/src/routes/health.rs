//! Liveness and readiness probes (not audited: they decide nothing).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;

use crate::problem::Failure;
use crate::state::AppState;
use nuage_core::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when unsealed and the metadata store answers.
async fn readyz(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<serde_json::Value>), Failure> {
    if state.kms.is_sealed() {
        return Err(Failure(
            ApiError::unavailable("the server is sealed").with_code("sealed"),
        ));
    }
    Ok(match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": e.detail})),
        ),
    })
}
