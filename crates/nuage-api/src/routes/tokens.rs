//! API tokens. Anyone manages their own; administrators manage those of
//! service accounts. The secret is in the creation answer only.

use axum::extract::Path;
use axum::response::Response;
use axum::Json;
use http::StatusCode;
use nuage_core::model::{CreateToken, Principal, PrincipalKind, Token, TokenSecret};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::authn::{DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS};
use nuage_iam::Target;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};
use crate::routes::auth::sensitive;

fn target(p: &Principal) -> Target {
    Target::principal(&p.org_id, p.kind, &p.id, &p.name)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenListParams {
    /// Whose tokens (`user:<name>`, `service-account:<name>`, an id); the caller's by default.
    pub principal: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/tokens", tag = "tokens",
    params(("org" = String, Path, description = "Organization name or id"), TokenListParams),
    responses((status = 200, body = Page<Token>), (status = 404, body = Problem)))]
pub async fn list(ctx: Ctx, Q(q): Q<TokenListParams>) -> HandlerResult<Json<Page<Token>>> {
    let owner = match &q.principal {
        Some(spec) => ctx.principal_ref(spec).await?,
        None => ctx.subject.principal.clone(),
    };
    ctx.authorize("token.list", &target(&owner)).await?;
    let page = PageParams {
        limit: q.limit,
        page_token: q.page_token,
    }
    .validate()?;
    Ok(Json(
        ctx.state
            .store
            .token_list(&ctx.org()?.id, Some(&owner.id), &page)
            .await?,
    ))
}

/// Create an API token for oneself or for a service account.
#[utoipa::path(post, path = "/v1/orgs/{org}/tokens", tag = "tokens", request_body = CreateToken,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = TokenSecret), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn create(ctx: Ctx, Body(b): Body<CreateToken>) -> HandlerResult<Response> {
    let owner = match &b.principal {
        Some(spec) => ctx.principal_ref(spec).await?,
        None => ctx.subject.principal.clone(),
    };
    ctx.authorize("token.create", &target(&owner)).await?;
    let is_self = owner.id == ctx.subject.principal.id;
    if !is_self && owner.kind != PrincipalKind::ServiceAccount {
        return Err(ApiError::forbidden(
            "tokens can be created only for oneself or for service accounts",
        )
        .into());
    }
    name::validate("token", &b.name)?;
    let ttl = b.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !(60..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_seconds must be between 60 and {MAX_TOKEN_TTL_SECS}"),
        )
        .into());
    }
    let token = ctx
        .state
        .authn
        .issue_token(&owner, &b.name, "api", is_self && ctx.subject.mfa, ttl)
        .await?;
    Ok(sensitive(StatusCode::CREATED, token))
}

async fn owned(ctx: &Ctx, id: &str) -> Result<(Token, Principal), ApiError> {
    let org = ctx.org()?;
    let token = ctx
        .state
        .store
        .token_get(&org.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("token", id))?;
    let owner = ctx
        .state
        .store
        .principal_by_id(&org.id, &token.principal_id)
        .await?
        .ok_or_else(|| ApiError::not_found("token", id))?;
    Ok((token, owner))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/tokens/{token}", tag = "tokens",
    params(("org" = String, Path, description = "Organization name or id"), ("token" = String, Path, description = "Token id")),
    responses((status = 200, body = Token), (status = 404, body = Problem)))]
pub async fn get(ctx: Ctx, Path((_org, id)): Path<(String, String)>) -> HandlerResult<Json<Token>> {
    let (token, owner) = owned(&ctx, &id).await?;
    ctx.authorize("token.get", &target(&owner)).await?;
    Ok(Json(token))
}

/// Revoke a token; it stops working at once.
#[utoipa::path(delete, path = "/v1/orgs/{org}/tokens/{token}", tag = "tokens",
    params(("org" = String, Path, description = "Organization name or id"), ("token" = String, Path, description = "Token id")),
    responses((status = 200, body = Token), (status = 404, body = Problem)))]
pub async fn revoke(
    ctx: Ctx,
    Path((_org, id)): Path<(String, String)>,
) -> HandlerResult<Json<Token>> {
    let (_, owner) = owned(&ctx, &id).await?;
    ctx.authorize("token.revoke", &target(&owner)).await?;
    Ok(Json(
        ctx.state
            .store
            .token_revoke(&ctx.org()?.id, &id, now_ms())
            .await?,
    ))
}
