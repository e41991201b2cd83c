//! An organization as its members see it.

use axum::Json;
use http::StatusCode;
use nuage_core::model::{Org, UpdateOrg};
use nuage_core::page::Page;
use nuage_core::ApiError;

use crate::ctx::{Body, Ctx, IfMatch, Tagged};
use crate::problem::{HandlerResult, Problem};

/// The organizations the caller belongs to (its own).
#[utoipa::path(get, path = "/v1/orgs", tag = "orgs", responses((status = 200, body = Page<Org>)))]
pub async fn list_orgs(ctx: Ctx) -> HandlerResult<Json<Page<Org>>> {
    let org = ctx
        .state
        .store
        .org_get(&ctx.subject.principal.org_id)
        .await?
        .ok_or_else(|| ApiError::not_found("organization", &ctx.subject.principal.org_id))?;
    ctx.authorize("org.get", &nuage_iam::Target::org(&org.id, &org.name))
        .await?;
    Ok(Json(Page {
        items: vec![org],
        next_page_token: None,
    }))
}

#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = Org), (status = 404, body = Problem)))]
pub async fn get_org(ctx: Ctx) -> HandlerResult<Tagged<Org>> {
    ctx.authorize("org.get", &ctx.org_target()?).await?;
    let org = ctx.org()?.clone();
    let g = org.generation;
    Ok(Tagged(StatusCode::OK, org, g))
}

/// Change the display name or which roles require a second factor.
#[utoipa::path(patch, path = "/v1/orgs/{org}", tag = "orgs", request_body = UpdateOrg,
    params(("org" = String, Path, description = "Organization name or id"), IfMatch),
    responses((status = 200, body = Org), (status = 400, body = Problem), (status = 412, body = Problem)))]
pub async fn update_org(
    ctx: Ctx,
    IfMatch(gen): IfMatch,
    Body(body): Body<UpdateOrg>,
) -> HandlerResult<Tagged<Org>> {
    ctx.authorize("org.update", &ctx.org_target()?).await?;
    if let Some(roles) = &body.mfa_required_roles {
        if let Some(bad) = roles
            .iter()
            .find(|r| !ctx.state.authz.registry().is_role(r))
        {
            return Err(
                ApiError::bad_request("unknown_role", format!("no role named {bad:?}")).into(),
            );
        }
    }
    let org = ctx.org()?;
    let updated = ctx
        .state
        .store
        .org_update(&org.id, gen, |o| {
            if let Some(d) = body.display_name {
                o.display_name = d;
            }
            if let Some(r) = body.mfa_required_roles {
                o.mfa_required_roles = r;
            }
            Ok(())
        })
        .await?;
    let g = updated.generation;
    Ok(Tagged(StatusCode::OK, updated, g))
}
