//! `Idempotency-Key` for mutations: the first successful answer to a key is
//! kept (24 h) and replayed to retries of the same request by the same
//! bearer; reusing a key for a different request is a 422.
//!
//! Two rules keep a replay from being a way around the pipeline:
//! - an answer that carries a secret or tenant plaintext is never kept:
//!   its route is listed in [`SECRET_ANSWERS`] (a test walks the OpenAPI
//!   documents and fails when a route whose answer holds a secret field is
//!   missing), and a handler may also mark one answer [`Sensitive`];
//! - the authorization checks the first request passed are kept with the
//!   answer ([`Check`]) and decided again for the replay, as that request
//!   would be now; the replay is audited like any request, with the first
//!   request's id under `idempotent_replay`.

use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};
use nuage_core::model::PrincipalKind;
use nuage_core::time::now_ms;
use nuage_core::ApiError;
use nuage_iam::{Env, Target};
use nuage_store::StoredResponse;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ctx::note_subject;
use crate::observe::{AuditSlot, RequestId, SourceAddr};
use crate::problem::{ErrorMarker, Failure};
use crate::state::AppState;

/// Response extension: this answer holds a secret; do not keep it.
#[derive(Clone, Copy, Debug)]
pub struct Sensitive;

pub const HEADER: &str = "idempotency-key";
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

/// Routes (method, path template) whose answers carry a secret or tenant
/// plaintext: never stored, so a retry runs the request again.
pub const SECRET_ANSWERS: &[(&str, &str)] = &[
    ("POST", "/v1/login"),
    ("POST", "/v1/login/oidc/finish"),
    ("POST", "/v1/me/mfa"),
    ("POST", "/v1/orgs/{org}/tokens"),
    ("POST", "/v1/orgs/{org}/access-keys"),
    (
        "POST",
        "/v1/orgs/{org}/projects/{project}/keys/{key}/decrypt",
    ),
    ("POST", "/admin/v1/login"),
    ("POST", "/admin/v1/me/mfa"),
    ("POST", "/admin/v1/tokens"),
    ("POST", "/admin/v1/operators"),
    ("POST", "/admin/v1/orgs"),
    ("POST", "/admin/v1/nodes"),
    ("POST", "/admin/v1/nodes/{node}/credential"),
    ("POST", "/agent/v1/instances/{instance}/keys"),
];

fn secret_answer(method: &Method, route: &str) -> bool {
    SECRET_ANSWERS
        .iter()
        .any(|(m, r)| *m == method.as_str() && *r == route)
}

/// One authorization a request passed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Check {
    /// A policy decision of the tenant realm.
    Cedar {
        action: String,
        kind: String,
        id: String,
        name: String,
        org_id: String,
        project_id: Option<String>,
    },
    /// An operator route (every operator may).
    Operator { action: String, resource: String },
    /// An agent route: a node acting on itself.
    Node { action: String },
}

impl Check {
    pub fn cedar(action: &str, t: &Target) -> Check {
        Check::Cedar {
            action: action.to_string(),
            kind: t.kind.to_string(),
            id: t.id.clone(),
            name: t.name.clone(),
            org_id: t.org_id.clone(),
            project_id: t.project_id.clone(),
        }
    }
}

/// The entity types a stored check can name (a [`Target`]'s kind is static).
const TARGET_KINDS: &[&str] = &[
    "Org",
    "Project",
    "User",
    "ServiceAccount",
    "Operator",
    "Group",
    "Policy",
    "Bucket",
];

/// The checks of the request being served, filled by `Ctx::authorize` and
/// its kin when the request carries an `Idempotency-Key`.
#[derive(Clone, Default)]
pub struct Checks(Arc<Mutex<Vec<Check>>>);

impl Checks {
    pub fn push(&self, check: Check) {
        if let Ok(mut v) = self.0.lock() {
            if !v.contains(&check) {
                v.push(check);
            }
        }
    }

    fn take(&self) -> Vec<Check> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// What is kept beside the answer: the first request and its checks.
#[derive(Serialize, Deserialize, Default)]
struct Kept {
    request_id: String,
    checks: Vec<Check>,
}

pub async fn idempotency(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
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
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    if secret_answer(req.method(), &route) {
        return next.run(req).await;
    }
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
    let checks = Checks::default();
    req.extensions_mut().insert(checks.clone());
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) if crate::listener::is_body_stall(&e) => {
            return Failure(crate::ctx::stalled_body()).into_response()
        }
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
            return match replay(&state, &parts.extensions, &bearer, stored).await {
                Ok(r) => r,
                Err(e) => Failure(e).into_response(),
            };
        }
        Ok(None) => {}
        Err(e) => return Failure(e).into_response(),
    }

    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
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
    let kept = Kept {
        request_id,
        checks: checks.take(),
    };
    let stored = StoredResponse {
        request_hash,
        status: rparts.status.as_u16(),
        body: String::from_utf8_lossy(&rbytes).into_owned(),
        checks: serde_json::to_string(&kept).unwrap_or_default(),
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

/// The stored answer, once the bearer still authenticates and every check
/// of the first request still passes; the audit entry says it is a replay.
async fn replay(
    state: &AppState,
    ext: &http::Extensions,
    bearer: &str,
    stored: StoredResponse,
) -> Result<Response, ApiError> {
    let slot = ext.get::<AuditSlot>().cloned().unwrap_or_default();
    let kept: Kept = if stored.checks.is_empty() {
        Kept::default()
    } else {
        serde_json::from_str(&stored.checks)
            .map_err(|_| ApiError::internal("a stored idempotent answer is unreadable"))?
    };
    slot.update(|a| {
        a.details
            .insert("idempotent_replay".into(), kept.request_id.clone());
    });
    let node_route = kept.checks.iter().any(|c| matches!(c, Check::Node { .. }));
    let subject = if node_route {
        let node = nuage_compute::nodes::authenticate(&state.store, bearer).await?;
        slot.update(|a| {
            a.principal_id = Some(node.id.clone());
            a.principal_name = format!("node:{}", node.name);
            a.log_id = Some(nuage_audit::log::PLATFORM_LOG.to_string());
        });
        None
    } else {
        let subject = state.authn.authenticate(bearer, state.realm).await?;
        note_subject(&slot, &subject);
        Some(subject)
    };
    let env = Env {
        source_ip: ext
            .get::<SourceAddr>()
            .map(|s| s.0.clone())
            .unwrap_or_default(),
        now_secs: now_ms() / 1000,
    };
    for check in &kept.checks {
        match (check, &subject) {
            (
                Check::Cedar {
                    action,
                    kind,
                    id,
                    name,
                    org_id,
                    project_id,
                },
                Some(subject),
            ) => {
                let kind = TARGET_KINDS
                    .iter()
                    .find(|k| *k == kind)
                    .ok_or_else(|| ApiError::internal("a stored check names an unknown kind"))?;
                let target = Target {
                    kind,
                    id: id.clone(),
                    name: name.clone(),
                    org_id: org_id.clone(),
                    project_id: project_id.clone(),
                };
                slot.update(|a| {
                    a.action = Some(action.clone());
                    a.resource = Some(target.label());
                });
                let d = state.authz.decide(subject, action, &target, &env).await?;
                slot.update(|a| {
                    a.decision = Some(if d.allowed { "allow" } else { "deny" });
                    a.policies = d.policies.clone();
                });
                if !d.allowed {
                    return Err(ApiError::forbidden(format!(
                        "{} may not {action} on {}",
                        subject.principal.name,
                        target.label()
                    )));
                }
            }
            (Check::Operator { action, resource }, Some(subject))
                if subject.principal.kind == PrincipalKind::Operator =>
            {
                slot.update(|a| {
                    a.action = Some(action.clone());
                    a.resource = Some(resource.clone());
                    a.decision = Some("allow");
                    a.policies = vec!["operator".to_string()];
                });
            }
            (Check::Node { action }, None) => {
                slot.update(|a| {
                    a.action = Some(action.clone());
                    a.decision = Some("allow");
                    a.policies = vec!["node-self".to_string()];
                });
            }
            _ => {
                slot.update(|a| a.decision = Some("deny"));
                return Err(ApiError::forbidden(
                    "this credential may not replay that request",
                ));
            }
        }
    }
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut r = (status, stored.body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// Field names of answers that hold a secret or tenant plaintext.
    const SECRET_FIELDS: &[&str] = &[
        "secret",
        "secret_access_key",
        "plaintext",
        "token",
        "owner_token",
        "enrollment_token",
        "user_data",
        "data_key",
        "private_key",
        "password",
    ];

    /// Property names reachable from `schema`, following `$ref`s once.
    fn fields(
        doc: &Value,
        schema: &Value,
        seen: &mut BTreeSet<String>,
        out: &mut BTreeSet<String>,
    ) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default().to_string();
            if seen.insert(name.clone()) {
                let target = doc["components"]["schemas"][&name].clone();
                fields(doc, &target, seen, out);
            }
            return;
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                out.insert(k.clone());
                fields(doc, v, seen, out);
            }
        }
        for k in ["items", "additionalProperties"] {
            if let Some(v) = schema.get(k) {
                fields(doc, v, seen, out);
            }
        }
        for k in ["allOf", "oneOf", "anyOf"] {
            for v in schema
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                fields(doc, v, seen, out);
            }
        }
    }

    /// Every mutation whose success answer can hold a secret field is
    /// declared, so its answer is never stored; and nothing declared is
    /// stale.
    #[test]
    fn every_route_whose_answer_holds_a_secret_is_never_kept() {
        let mut found = BTreeSet::new();
        for spec in [crate::routes::tenant_spec(), crate::routes::admin_spec()] {
            let doc = serde_json::to_value(&spec).expect("spec as JSON");
            let paths = doc["paths"].as_object().cloned().unwrap_or_default();
            for (path, ops) in paths {
                for method in ["post", "put", "patch", "delete"] {
                    let Some(op) = ops.get(method) else { continue };
                    let mut names = BTreeSet::new();
                    let responses = op["responses"].as_object().cloned().unwrap_or_default();
                    for (status, r) in responses {
                        if !status.starts_with('2') {
                            continue;
                        }
                        for c in r["content"]
                            .as_object()
                            .into_iter()
                            .flat_map(|c| c.values())
                        {
                            fields(&doc, &c["schema"], &mut BTreeSet::new(), &mut names);
                        }
                    }
                    let secret: Vec<&String> = names
                        .iter()
                        .filter(|n| SECRET_FIELDS.contains(&n.as_str()))
                        .collect();
                    if !secret.is_empty() {
                        let m = method.to_uppercase();
                        assert!(
                            secret_answer(
                                &Method::from_bytes(m.as_bytes()).expect("method"),
                                &path
                            ),
                            "{m} {path} answers {secret:?}: list it in SECRET_ANSWERS"
                        );
                        found.insert((m, path.clone()));
                    }
                }
            }
        }
        for (m, p) in SECRET_ANSWERS {
            assert!(
                found.contains(&(m.to_string(), p.to_string())),
                "{m} {p} is listed but no such route answers a secret"
            );
        }
    }
}
