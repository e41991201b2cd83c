//! S3 access keys. Anyone manages their own; administrators manage those of
//! service accounts. The secret is in the creation answer only, and is kept
//! sealed by the key service (SigV4 needs it back to check signatures).

use axum::extract::Path;
use axum::response::Response;
use axum::Json;
use http::StatusCode;
use nuage_core::model::{AccessKey, AccessKeyCreated, CreateAccessKey, Principal, PrincipalKind};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::ApiError;
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
pub struct AccessKeyListParams {
    /// Whose keys (`user:<name>`, `service-account:<name>`, an id); the caller's by default.
    pub principal: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

async fn owner_of(ctx: &Ctx, spec: &Option<String>) -> Result<Principal, ApiError> {
    match spec {
        Some(spec) => ctx.principal_ref(spec).await,
        None => Ok(ctx.subject.principal.clone()),
    }
}

#[utoipa::path(get, path = "/v1/orgs/{org}/access-keys", tag = "access-keys",
    params(("org" = String, Path, description = "Organization name or id"), AccessKeyListParams),
    responses((status = 200, body = Page<AccessKey>), (status = 404, body = Problem)))]
pub async fn list(ctx: Ctx, Q(q): Q<AccessKeyListParams>) -> HandlerResult<Json<Page<AccessKey>>> {
    let owner = owner_of(&ctx, &q.principal).await?;
    ctx.authorize("access_key.list", &target(&owner)).await?;
    let page = PageParams {
        limit: q.limit,
        page_token: q.page_token,
    }
    .validate()?;
    Ok(Json(
        ctx.state
            .store
            .access_key_list(&ctx.org()?.id, &owner.id, &page)
            .await?,
    ))
}

/// Create an S3 access key for oneself or for a service account.
#[utoipa::path(post, path = "/v1/orgs/{org}/access-keys", tag = "access-keys", request_body = CreateAccessKey,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = AccessKeyCreated), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn create(ctx: Ctx, Body(b): Body<CreateAccessKey>) -> HandlerResult<Response> {
    let owner = owner_of(&ctx, &b.principal).await?;
    ctx.authorize("access_key.create", &target(&owner)).await?;
    if owner.id != ctx.subject.principal.id && owner.kind != PrincipalKind::ServiceAccount {
        return Err(ApiError::forbidden(
            "access keys can be created only for oneself or for service accounts",
        )
        .into());
    }
    if b.description.len() > 256 {
        return Err(
            ApiError::bad_request("invalid_description", "description over 256 bytes").into(),
        );
    }
    let created = ctx
        .state
        .authn
        .issue_access_key(&owner, &b.description)
        .await?;
    ctx.record_detail("access_key", &created.access_key.id);
    Ok(sensitive(StatusCode::CREATED, created))
}

async fn owned(ctx: &Ctx, id: &str) -> Result<(AccessKey, Principal), ApiError> {
    let org = ctx.org()?;
    let key = ctx
        .state
        .store
        .access_key_get(&org.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("access key", id))?;
    let owner = ctx
        .state
        .store
        .principal_by_id(&org.id, &key.principal_id)
        .await?
        .ok_or_else(|| ApiError::not_found("access key", id))?;
    Ok((key, owner))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/access-keys/{access_key}", tag = "access-keys",
    params(("org" = String, Path, description = "Organization name or id"), ("access_key" = String, Path, description = "Access key id")),
    responses((status = 200, body = AccessKey), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, id)): Path<(String, String)>,
) -> HandlerResult<Json<AccessKey>> {
    let (key, owner) = owned(&ctx, &id).await?;
    ctx.authorize("access_key.get", &target(&owner)).await?;
    Ok(Json(key))
}

/// Revoke an access key; requests signed with it fail at once.
#[utoipa::path(delete, path = "/v1/orgs/{org}/access-keys/{access_key}", tag = "access-keys",
    params(("org" = String, Path, description = "Organization name or id"), ("access_key" = String, Path, description = "Access key id")),
    responses((status = 200, body = AccessKey), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn revoke(
    ctx: Ctx,
    Path((_org, id)): Path<(String, String)>,
) -> HandlerResult<Json<AccessKey>> {
    let (_, owner) = owned(&ctx, &id).await?;
    ctx.authorize("access_key.revoke", &target(&owner)).await?;
    Ok(Json(
        ctx.state
            .store
            .access_key_revoke(&ctx.org()?.id, &id, now_ms())
            .await?,
    ))
}
