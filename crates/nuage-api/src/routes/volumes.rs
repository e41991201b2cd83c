//! Block volumes of a project: blank, or copy-on-write overlays of images.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_compute::model::{CreateVolume, UpdateVolume, Volume};
use nuage_core::model::kms::Justification;
use nuage_core::page::{Page, PageParams};
use nuage_core::ApiError;
use nuage_iam::Target;
use nuage_store::VolumeRow;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};

/// The volume `name` of project `project`, or a 404 (also for a volume of
/// another project or organization).
async fn find(ctx: &Ctx, project: &str, name: &str) -> Result<(Target, VolumeRow), ApiError> {
    let p = ctx.project(project).await?;
    let v = ctx
        .state
        .store
        .volume_get(&p.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", name))?;
    Ok((Target::project(&p.org_id, &p.id, &p.name), v))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/volumes", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<Volume>), (status = 404, body = Problem)))]
pub async fn list(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Volume>>> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.list_volumes")
        .await?;
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .volume_list(
            &p.id,
            page.after.as_deref().unwrap_or(""),
            i64::from(page.limit) + 1,
        )
        .await?;
    let items = rows.iter().map(Volume::from).collect();
    Ok(Json(Page::from_rows(items, page.limit, |v| v.name.clone())))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/volumes", tag = "compute",
    request_body = CreateVolume,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = Volume), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(body): Body<CreateVolume>,
) -> HandlerResult<(StatusCode, Json<Volume>)> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.create_volume")
        .await?;
    let (row, uses) = ctx
        .state
        .compute
        .volume_create(
            &p,
            &body,
            &ctx.subject.principal.id,
            &ctx.purpose(Justification::ServiceForPrincipal),
        )
        .await?;
    for u in &uses {
        ctx.record_use(u);
    }
    ctx.record_detail("volume", &row.name);
    Ok((StatusCode::CREATED, Json(Volume::from(&row))))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/volumes/{volume}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("volume" = String, Path, description = "Volume name or id")),
    responses((status = 200, body = Volume), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, project, volume)): Path<(String, String, String)>,
) -> HandlerResult<Json<Volume>> {
    let (target, row) = find(&ctx, &project, &volume).await?;
    ctx.authorize("compute.get_volume", &target).await?;
    Ok(Json(Volume::from(&row)))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}/volumes/{volume}", tag = "compute",
    request_body = UpdateVolume,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("volume" = String, Path, description = "Volume name or id")),
    responses((status = 200, body = Volume), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update(
    ctx: Ctx,
    Path((_org, project, volume)): Path<(String, String, String)>,
    Body(body): Body<UpdateVolume>,
) -> HandlerResult<Json<Volume>> {
    let (target, row) = find(&ctx, &project, &volume).await?;
    ctx.authorize("compute.update_volume", &target).await?;
    if let Some(size) = &body.size {
        ctx.state
            .compute
            .volume_resize(&row, size, &ctx.purpose(Justification::ServiceForPrincipal))
            .await?;
        ctx.record_detail("size", size);
    }
    let (_, row) = find(&ctx, &project, &row.id).await?;
    Ok(Json(Volume::from(&row)))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}/volumes/{volume}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("volume" = String, Path, description = "Volume name or id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, project, volume)): Path<(String, String, String)>,
) -> HandlerResult<StatusCode> {
    let (target, row) = find(&ctx, &project, &volume).await?;
    ctx.authorize("compute.delete_volume", &target).await?;
    ctx.state.compute.volume_delete(&row).await?;
    ctx.record_detail("volume", &row.name);
    Ok(StatusCode::NO_CONTENT)
}
