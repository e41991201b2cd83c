//! Extractors and response helpers every handler uses: the authenticated
//! [`Ctx`] (with organization scoping and authorization), request bodies and
//! queries whose rejections become precise problems, `If-Match` and ETags.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use nuage_audit::log::PLATFORM_LOG;
use nuage_core::model::kms::Justification;
use nuage_core::model::{Org, Principal, PrincipalKind, Project};
use nuage_core::time::now_ms;
use nuage_core::ApiError;
use nuage_iam::{Env, Subject, Target};
use nuage_kms::{KeyUse, Purpose};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::idempotency::{Check, Checks};
use crate::observe::{AuditSlot, RequestId, SourceAddr};
use crate::problem::Failure;
use crate::state::AppState;

fn bearer(parts: &http::HeaderMap) -> Result<&str, ApiError> {
    let value = parts
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("Authorization must be 'Bearer <token>'"))
}

/// Route layer: authenticates the bearer token of the listener's realm.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let slot = req
        .extensions()
        .get::<AuditSlot>()
        .cloned()
        .unwrap_or_default();
    let token = match bearer(req.headers()) {
        Ok(t) => t.to_string(),
        Err(e) => return Failure(e).into_response(),
    };
    match state.authn.authenticate(&token, state.realm).await {
        Ok(subject) => {
            note_subject(&slot, &subject);
            req.extensions_mut().insert(subject);
            next.run(req).await
        }
        Err(e) => Failure(e).into_response(),
    }
}

/// Names the caller in the request's audit entry, in its organization's log.
pub fn note_subject(slot: &AuditSlot, subject: &Subject) {
    slot.update(|a| {
        a.principal_id = Some(subject.principal.id.clone());
        a.principal_name = subject.principal.name.clone();
        a.log_id = Some(if subject.principal.org_id.is_empty() {
            PLATFORM_LOG.to_string()
        } else {
            subject.principal.org_id.clone()
        });
    });
}

/// Route layer of the agent routes: authenticates a node's credential (an
/// enrolled `nuage agent`), never a person's token, and names the node in
/// the platform's audit log.
pub async fn authenticate_node(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let slot = req
        .extensions()
        .get::<AuditSlot>()
        .cloned()
        .unwrap_or_default();
    let token = match bearer(req.headers()) {
        Ok(t) => t.to_string(),
        Err(e) => return Failure(e).into_response(),
    };
    match nuage_compute::nodes::authenticate(&state.store, &token).await {
        Ok(node) => {
            slot.update(|a| {
                a.principal_id = Some(node.id.clone());
                a.principal_name = format!("node:{}", node.name);
                a.log_id = Some(PLATFORM_LOG.to_string());
            });
            req.extensions_mut().insert(NodeCaller(node));
            next.run(req).await
        }
        Err(e) => Failure(e).into_response(),
    }
}

/// The node an agent route serves (see [`authenticate_node`]).
#[derive(Clone)]
pub struct NodeCaller(pub nuage_store::NodeRow);

/// Everything an agent route needs: the state, the calling node, and its
/// audit entry.
pub struct NodeCtx {
    pub state: AppState,
    pub node: nuage_store::NodeRow,
    pub request_id: String,
    pub source: String,
    slot: AuditSlot,
    checks: Option<Checks>,
}

impl FromRequestParts<AppState> for NodeCtx {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let node = parts
            .extensions
            .get::<NodeCaller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("not a node"))?;
        Ok(NodeCtx {
            state: state.clone(),
            node: node.0,
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            source: parts
                .extensions
                .get::<SourceAddr>()
                .map(|s| s.0.clone())
                .unwrap_or_default(),
            slot: parts
                .extensions
                .get::<AuditSlot>()
                .cloned()
                .unwrap_or_default(),
            checks: parts.extensions.get::<Checks>().cloned(),
        })
    }
}

impl NodeCtx {
    /// A node acts only on itself: the route decides, the entry says so.
    pub fn allow_self(&self, action: &str) {
        if let Some(c) = &self.checks {
            c.push(Check::Node {
                action: action.to_string(),
            });
        }
        let resource = format!("node:{}", self.node.name);
        self.slot.update(|a| {
            a.action = Some(action.to_string());
            a.resource = Some(resource);
            a.decision = Some("allow");
            a.policies = vec!["node-self".to_string()];
        });
    }

    /// Adds a fact to this request's audit entry.
    pub fn record_detail(&self, name: &str, value: &str) {
        self.slot
            .update(|a| drop(a.details.insert(name.to_string(), value.to_string())));
    }

    /// Adds a key use (key, version, purpose) to this request's audit entry.
    pub fn record_use(&self, used: &KeyUse) {
        self.slot.update(|a| a.details.extend(used.details()));
    }

    /// Writes an entry for this request in organization `org_id`'s own
    /// audit log as well (what a node did with its data, such as receiving
    /// its disk keys), before the answer leaves: when it cannot be written
    /// the request fails (503) and the node gets nothing.
    pub async fn record_in_org_log(
        &self,
        org_id: &str,
        action: &str,
        resource: &str,
        (method, path): (&str, &str),
        details: std::collections::BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let record = nuage_core::model::AuditRecord {
            time: now_ms(),
            request_id: self.request_id.clone(),
            principal: self.node.id.clone(),
            principal_name: format!("node:{}", self.node.name),
            source: self.source.clone(),
            method: method.to_string(),
            path: path.to_string(),
            action: action.to_string(),
            resource: resource.to_string(),
            decision: "allow".into(),
            policies: vec!["node-self".to_string()],
            status: 200,
            details,
        };
        self.state.audit.record(org_id, record).await.map(|_| ())
    }
}

/// Route layer for `/v1/orgs/{org}/…`: the caller's own organization or a
/// 404, never a 403 — another tenant's names are not even confirmed.
pub async fn org_guard(
    Path(params): Path<HashMap<String, String>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(name) = params.get("org") else {
        return next.run(req).await;
    };
    let slot = req
        .extensions()
        .get::<AuditSlot>()
        .cloned()
        .unwrap_or_default();
    slot.update(|a| a.resource = Some(format!("org:{name}")));
    let Some(subject) = req.extensions().get::<Subject>().cloned() else {
        return Failure(ApiError::unauthenticated("not authenticated")).into_response();
    };
    // The caller's organization came with its credential: no lookup, and
    // another tenant's name is never even resolved.
    match subject.org {
        Some(org) if org.name == *name || org.id == *name => {
            req.extensions_mut().insert(org);
            next.run(req).await
        }
        _ => {
            slot.update(|a| a.decision = Some("deny"));
            Failure(ApiError::not_found("organization", name)).into_response()
        }
    }
}

/// Everything a handler needs about the request it serves.
pub struct Ctx {
    pub state: AppState,
    pub subject: Subject,
    pub org: Option<Org>,
    pub request_id: String,
    pub source: String,
    slot: AuditSlot,
    /// Filled when the request may be replayed (see [`crate::idempotency`]).
    checks: Option<Checks>,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let subject = parts
            .extensions
            .get::<Subject>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("not authenticated"))?;
        Ok(Ctx {
            state: state.clone(),
            subject,
            org: parts.extensions.get::<Org>().cloned(),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            source: parts
                .extensions
                .get::<SourceAddr>()
                .map(|s| s.0.clone())
                .unwrap_or_default(),
            slot: parts
                .extensions
                .get::<AuditSlot>()
                .cloned()
                .unwrap_or_default(),
            checks: parts.extensions.get::<Checks>().cloned(),
        })
    }
}

impl Ctx {
    pub fn env(&self) -> Env {
        Env {
            source_ip: self.source.clone(),
            now_secs: now_ms() / 1000,
        }
    }

    /// The organization of an `/v1/orgs/{org}` route (checked by the guard).
    pub fn org(&self) -> Result<&Org, ApiError> {
        self.org
            .as_ref()
            .ok_or_else(|| ApiError::internal("route is not organization-scoped"))
    }

    /// Records the action and decides it; a denial is a 403 naming the
    /// action, and both outcomes reach the audit entry.
    pub async fn authorize(&self, action: &'static str, target: &Target) -> Result<(), ApiError> {
        self.slot.update(|a| {
            a.action = Some(action.to_string());
            a.resource = Some(target.label());
        });
        let decision = self
            .state
            .authz
            .decide(&self.subject, action, target, &self.env())
            .await?;
        self.slot.update(|a| {
            a.decision = Some(if decision.allowed { "allow" } else { "deny" });
            a.policies = decision.policies.clone();
        });
        if decision.allowed {
            if let Some(c) = &self.checks {
                c.push(Check::cedar(action, target));
            }
            Ok(())
        } else {
            let roles = self.state.authz.registry().roles_granting(action);
            let hint = if roles.is_empty() {
                "no built-in role grants it; a custom policy may".to_string()
            } else {
                format!(
                    "a binding to one of these roles allows it: {}",
                    roles.join(", ")
                )
            };
            Err(ApiError::forbidden(format!(
                "{} may not {action} on {} ({hint})",
                self.subject.principal.name,
                target.label()
            )))
        }
    }

    /// For operator routes: every operator may act on the platform.
    pub fn allow_operator(&self, action: &str, resource: &str) {
        if let Some(c) = &self.checks {
            c.push(Check::Operator {
                action: action.to_string(),
                resource: resource.to_string(),
            });
        }
        self.slot.update(|a| {
            a.action = Some(action.to_string());
            a.resource = Some(resource.to_string());
            a.decision = Some("allow");
            a.policies = vec!["operator".to_string()];
        });
    }

    pub fn note_action(&self, action: &str, resource: &str) {
        self.slot.update(|a| {
            a.action = Some(action.to_string());
            a.resource = Some(resource.to_string());
        });
    }

    pub fn org_target(&self) -> Result<Target, ApiError> {
        let org = self.org()?;
        Ok(Target::org(&org.id, &org.name))
    }

    pub async fn project(&self, name: &str) -> Result<Project, ApiError> {
        let org = self.org()?;
        self.state
            .store
            .project_get(&org.id, name)
            .await?
            .ok_or_else(|| ApiError::not_found("project", name))
    }

    /// Project `name` of the request's organization, once `action` on it
    /// is allowed (a 404 for a project of another organization).
    pub async fn project_allowing(
        &self,
        name: &str,
        action: &'static str,
    ) -> Result<(Project, Target), ApiError> {
        let p = self.project(name).await?;
        let target = Target::project(&p.org_id, &p.id, &p.name);
        self.authorize(action, &target).await?;
        Ok((p, target))
    }

    /// Who is using a key for this request, and why.
    pub fn purpose(&self, justification: Justification) -> Purpose {
        Purpose {
            justification,
            principal: Some(self.subject.principal.id.clone()),
            request_id: Some(self.request_id.clone()),
        }
    }

    /// Adds a fact to this request's audit entry.
    pub fn record_detail(&self, name: &str, value: &str) {
        self.slot
            .update(|a| drop(a.details.insert(name.to_string(), value.to_string())));
    }

    /// Adds a key use (key, version, purpose) to this request's audit entry.
    pub fn record_use(&self, used: &KeyUse) {
        self.slot.update(|a| a.details.extend(used.details()));
    }

    pub async fn principal(&self, kind: PrincipalKind, name: &str) -> Result<Principal, ApiError> {
        let org = self.org()?;
        self.state
            .store
            .principal_get(&org.id, kind, name)
            .await?
            .ok_or_else(|| ApiError::not_found(nuage_store::kind_label(kind), name))
    }

    /// Resolves `user:<name>`, `service-account:<name>` or a principal id.
    pub async fn principal_ref(&self, spec: &str) -> Result<Principal, ApiError> {
        let org = self.org()?;
        if let Some((kind, name)) = spec.split_once(':') {
            let kind = match kind {
                "user" => PrincipalKind::User,
                "service-account" | "service_account" | "sa" => PrincipalKind::ServiceAccount,
                other => {
                    return Err(ApiError::invalid(format!(
                    "unknown principal kind {other:?}: use user:<name> or service-account:<name>"
                )))
                }
            };
            return self.principal(kind, name).await;
        }
        self.state
            .store
            .principal_by_id(&org.id, spec)
            .await?
            .ok_or_else(|| ApiError::not_found("principal", spec))
    }
}

/// A JSON body whose rejections are problems with precise codes.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection as J;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(J::JsonDataError(e)) => {
                Err(ApiError::bad_request("invalid_body", e.body_text()).into())
            }
            Err(J::JsonSyntaxError(e)) => {
                Err(ApiError::bad_request("malformed_json", e.body_text()).into())
            }
            Err(J::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            )
            .into()),
            Err(J::BytesRejection(e)) => {
                let status = e.status();
                if crate::listener::is_body_stall(&e) {
                    Err(stalled_body().into())
                } else if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::new(
                        status,
                        "body_too_large",
                        "the request body exceeds the configured limit",
                    )
                    .into())
                } else {
                    Err(ApiError::new(status, "invalid_body", e.body_text()).into())
                }
            }
            Err(e) => Err(ApiError::bad_request("invalid_body", e.body_text()).into()),
        }
    }
}

/// The problem of a request body that stopped arriving (the listener
/// answers the same, see [`crate::listener`]).
pub fn stalled_body() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body stalled: no byte arrived within the body stall timeout",
    )
}

/// Query parameters whose rejections are problems.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()).into())
    }
}

/// The generation named by `If-Match` (`"3"`), if any.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let s = v.to_str().unwrap_or_default().trim();
        if s == "*" {
            return Ok(IfMatch(None));
        }
        let s = s.strip_prefix("W/").unwrap_or(s);
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .and_then(|s| s.parse::<i64>().ok())
            .map(|g| IfMatch(Some(g)))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_if_match", "If-Match must be an ETag such as \"3\"")
                    .into()
            })
    }
}

/// A JSON answer with an ETag (the resource's generation).
pub struct Tagged<T>(pub StatusCode, pub T, pub i64);

impl<T: Serialize> IntoResponse for Tagged<T> {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(self.1)).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", self.2)) {
            r.headers_mut().insert(header::ETAG, v);
        }
        r
    }
}
