//! Groups and their members.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{AddMember, CreateGroup, Group, PrincipalRef, UpdateGroup};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::Target;

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::problem::{HandlerResult, Problem};

fn target(g: &Group) -> Target {
    Target::in_org("Group", &g.org_id, &g.id, &g.name)
}

async fn group(ctx: &Ctx, name: &str) -> Result<Group, ApiError> {
    ctx.state
        .store
        .group_get(&ctx.org()?.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("group", name))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/groups", tag = "groups",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<Group>), (status = 404, body = Problem)))]
pub async fn list(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<Group>>> {
    ctx.authorize("group.list", &ctx.org_target()?).await?;
    Ok(Json(
        ctx.state
            .store
            .group_list(&ctx.org()?.id, &page.validate()?)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/groups", tag = "groups", request_body = CreateGroup,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = Group), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create(ctx: Ctx, Body(b): Body<CreateGroup>) -> HandlerResult<Tagged<Group>> {
    ctx.authorize("group.create", &ctx.org_target()?).await?;
    name::validate("group", &b.name)?;
    if b.description.len() > 1024 {
        return Err(
            ApiError::bad_request("invalid_description", "description over 1024 bytes").into(),
        );
    }
    let now = now_ms();
    let g = Group {
        id: new_id(Kind::Group),
        org_id: ctx.org()?.id.clone(),
        name: b.name,
        description: b.description,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    ctx.state.store.group_create(&g).await?;
    Ok(Tagged(StatusCode::CREATED, g, 1))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/groups/{group}", tag = "groups",
    params(("org" = String, Path, description = "Organization name or id"), ("group" = String, Path, description = "Group name or id")),
    responses((status = 200, body = Group), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
) -> HandlerResult<Tagged<Group>> {
    let g = group(&ctx, &name).await?;
    ctx.authorize("group.get", &target(&g)).await?;
    let gen = g.generation;
    Ok(Tagged(StatusCode::OK, g, gen))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/groups/{group}", tag = "groups", request_body = UpdateGroup,
    params(("org" = String, Path, description = "Organization name or id"), ("group" = String, Path, description = "Group name or id"), IfMatch),
    responses((status = 200, body = Group), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn update(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
    Body(b): Body<UpdateGroup>,
) -> HandlerResult<Tagged<Group>> {
    let g = group(&ctx, &name).await?;
    ctx.authorize("group.update", &target(&g)).await?;
    let g = ctx
        .state
        .store
        .group_update(&g.id, gen, b.description)
        .await?;
    let gen = g.generation;
    Ok(Tagged(StatusCode::OK, g, gen))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/groups/{group}", tag = "groups",
    params(("org" = String, Path, description = "Organization name or id"), ("group" = String, Path, description = "Group name or id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
) -> HandlerResult<StatusCode> {
    let g = group(&ctx, &name).await?;
    ctx.authorize("group.delete", &target(&g)).await?;
    ctx.state.store.group_delete(&g.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/groups/{group}/members", tag = "groups",
    params(("org" = String, Path, description = "Organization name or id"), ("group" = String, Path, description = "Group name or id")),
    responses((status = 200, body = Vec<PrincipalRef>), (status = 404, body = Problem)))]
pub async fn list_members(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
) -> HandlerResult<Json<Vec<PrincipalRef>>> {
    let g = group(&ctx, &name).await?;
    ctx.authorize("group.get", &target(&g)).await?;
    Ok(Json(ctx.state.store.group_member_list(&g.id).await?))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/groups/{group}/members", tag = "groups", request_body = AddMember,
    params(("org" = String, Path, description = "Organization name or id"), ("group" = String, Path, description = "Group name or id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn add_member(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
    Body(b): Body<AddMember>,
) -> HandlerResult<StatusCode> {
    let g = group(&ctx, &name).await?;
    ctx.authorize("group.add_member", &target(&g)).await?;
    let p = ctx.principal_ref(&b.principal).await?;
    ctx.state
        .store
        .group_member_add(&g.id, &p.id, &p.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/groups/{group}/members/{member}", tag = "groups",
    params(("org" = String, Path, description = "Organization name or id"), ("group" = String, Path, description = "Group name or id"),
        ("member" = String, Path, description = "`user:<name>`, `service-account:<name>` or a principal id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn remove_member(
    ctx: Ctx,
    Path((_org, name, member)): Path<(String, String, String)>,
) -> HandlerResult<StatusCode> {
    let g = group(&ctx, &name).await?;
    ctx.authorize("group.remove_member", &target(&g)).await?;
    let p = ctx.principal_ref(&member).await?;
    if !ctx.state.store.group_member_remove(&g.id, &p.id).await? {
        return Err(ApiError::not_found("member", &member).into());
    }
    Ok(StatusCode::NO_CONTENT)
}
