//! Snapshots of a project's volumes.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_compute::model::{CreateSnapshot, Snapshot};
use nuage_core::model::kms::Justification;
use nuage_core::page::{Page, PageParams};
use nuage_core::ApiError;
use nuage_iam::Target;
use nuage_store::SnapshotRow;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};

/// The snapshot `name` of project `project`, or a 404 (also for one of
/// another project or organization).
async fn find(ctx: &Ctx, project: &str, name: &str) -> Result<(Target, SnapshotRow), ApiError> {
    let p = ctx.project(project).await?;
    let s = ctx
        .state
        .store
        .snapshot_get(&p.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("snapshot", name))?;
    Ok((Target::project(&p.org_id, &p.id, &p.name), s))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/snapshots", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<Snapshot>), (status = 404, body = Problem)))]
pub async fn list(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Snapshot>>> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.list_snapshots")
        .await?;
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .snapshot_list(
            &p.id,
            page.after.as_deref().unwrap_or(""),
            i64::from(page.limit) + 1,
        )
        .await?;
    let items = rows.iter().map(Snapshot::from).collect();
    Ok(Json(Page::from_rows(items, page.limit, |s| s.name.clone())))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/snapshots", tag = "compute",
    request_body = CreateSnapshot,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = Snapshot), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(body): Body<CreateSnapshot>,
) -> HandlerResult<(StatusCode, Json<Snapshot>)> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.create_snapshot")
        .await?;
    let v = ctx
        .state
        .store
        .volume_get(&p.id, &body.volume)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &body.volume))?;
    let s = ctx
        .state
        .compute
        .snapshot_create(
            &v,
            &body.name,
            &ctx.subject.principal.id,
            &ctx.purpose(Justification::ServiceForPrincipal),
        )
        .await?;
    ctx.record_detail("snapshot", &s.name);
    ctx.record_detail("volume", &v.name);
    Ok((StatusCode::CREATED, Json(Snapshot::from(&s))))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/snapshots/{snapshot}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("snapshot" = String, Path, description = "Snapshot name or id")),
    responses((status = 200, body = Snapshot), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, project, snapshot)): Path<(String, String, String)>,
) -> HandlerResult<Json<Snapshot>> {
    let (target, s) = find(&ctx, &project, &snapshot).await?;
    ctx.authorize("compute.get_snapshot", &target).await?;
    Ok(Json(Snapshot::from(&s)))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}/snapshots/{snapshot}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("snapshot" = String, Path, description = "Snapshot name or id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, project, snapshot)): Path<(String, String, String)>,
) -> HandlerResult<StatusCode> {
    let (target, s) = find(&ctx, &project, &snapshot).await?;
    ctx.authorize("compute.delete_snapshot", &target).await?;
    ctx.state.compute.snapshot_delete(&s).await?;
    ctx.record_detail("snapshot", &s.name);
    Ok(StatusCode::NO_CONTENT)
}
