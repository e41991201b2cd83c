//! Disk images of a project: created by name, then their file streamed in
//! (`PUT …/images/{image}/file`), inspected and imported encrypted.

use axum::body::Body as RawBody;
use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_compute::model::{CreateImage, Image, UpdateImage};
use nuage_core::model::kms::Justification;
use nuage_core::page::{Page, PageParams};
use nuage_core::ApiError;
use nuage_iam::Target;
use nuage_store::ImageRow;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};

/// The image `name` of project `project`, or a 404 (also for an image of
/// another project or organization).
async fn find(ctx: &Ctx, project: &str, name: &str) -> Result<(Target, ImageRow), ApiError> {
    let p = ctx.project(project).await?;
    let i = ctx
        .state
        .store
        .image_get(&p.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("image", name))?;
    Ok((Target::project(&p.org_id, &p.id, &p.name), i))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/images", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<Image>), (status = 404, body = Problem)))]
pub async fn list(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Image>>> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.list_images")
        .await?;
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .image_list(
            &p.id,
            page.after.as_deref().unwrap_or(""),
            i64::from(page.limit) + 1,
        )
        .await?;
    let items = rows.iter().map(Image::from).collect();
    Ok(Json(Page::from_rows(items, page.limit, |i| i.name.clone())))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/images", tag = "compute",
    request_body = CreateImage,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = Image), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(body): Body<CreateImage>,
) -> HandlerResult<(StatusCode, Json<Image>)> {
    let p = ctx.project(&project).await?;
    let why = ctx.purpose(Justification::ServiceForPrincipal);
    // From an object: the caller must be able to read it (decided first,
    // so the audit entry ends with the image's own decision).
    let source = match &body.source {
        Some(src) => {
            let b = nuage_objects::buckets::get_in_org(&ctx.state.store, &p.org_id, &src.bucket)
                .await?
                .ok_or_else(|| ApiError::not_found("bucket", &src.bucket))?;
            let bp = ctx.project(&b.project_id).await?;
            ctx.authorize(
                "s3.get_object",
                &Target::project(&b.org_id, &bp.id, &bp.name),
            )
            .await?;
            let (mut opened, used) = ctx
                .state
                .objects
                .open_object(&b, &src.key, &why)
                .await?
                .ok_or_else(|| ApiError::not_found("object", &src.key))?;
            opened.unlock(None)?;
            ctx.record_use(&used);
            ctx.record_detail("source", &format!("{}/{}", src.bucket, src.key));
            Some(opened)
        }
        None => None,
    };
    ctx.authorize(
        "compute.create_image",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    let (row, used) = ctx
        .state
        .compute
        .image_create(&p, &body, &ctx.subject.principal.id, &why)
        .await?;
    ctx.record_use(&used);
    ctx.record_detail("image", &row.name);
    let row = match source {
        Some(opened) => {
            let len = u64::try_from(opened.row.size).unwrap_or(0);
            let stream = Box::pin(ctx.state.objects.read(&opened, 0, len));
            ctx.state.compute.image_upload(&row, stream, &why).await?.0
        }
        None => row,
    };
    Ok((StatusCode::CREATED, Json(Image::from(&row))))
}

#[utoipa::path(put, path = "/v1/orgs/{org}/projects/{project}/images/{image}/file", tag = "compute",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The image: qcow2 (no backing or data file) or a raw disk"),
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("image" = String, Path, description = "Image name or id")),
    responses((status = 200, body = Image), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn upload(
    ctx: Ctx,
    Path((_org, project, image)): Path<(String, String, String)>,
    body: RawBody,
) -> HandlerResult<Json<Image>> {
    let (target, row) = find(&ctx, &project, &image).await?;
    ctx.authorize("compute.upload_image", &target).await?;
    ctx.record_detail("image", &row.name);
    let (row, used) = ctx
        .state
        .compute
        .image_upload(
            &row,
            body.into_data_stream(),
            &ctx.purpose(Justification::ServiceForPrincipal),
        )
        .await?;
    ctx.record_use(&used);
    ctx.record_detail("format", &row.source_format);
    Ok(Json(Image::from(&row)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/images/{image}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("image" = String, Path, description = "Image name or id")),
    responses((status = 200, body = Image), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, project, image)): Path<(String, String, String)>,
) -> HandlerResult<Json<Image>> {
    let (target, row) = find(&ctx, &project, &image).await?;
    ctx.authorize("compute.get_image", &target).await?;
    Ok(Json(Image::from(&row)))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}/images/{image}", tag = "compute",
    request_body = UpdateImage,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("image" = String, Path, description = "Image name or id")),
    responses((status = 200, body = Image), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update(
    ctx: Ctx,
    Path((_org, project, image)): Path<(String, String, String)>,
    Body(body): Body<UpdateImage>,
) -> HandlerResult<Json<Image>> {
    let (target, row) = find(&ctx, &project, &image).await?;
    ctx.authorize("compute.update_image", &target).await?;
    if let Some(v) = body.visibility {
        ctx.state.compute.image_set_visibility(&row, v).await?;
        ctx.record_detail("visibility", v.as_str());
    }
    let (_, row) = find(&ctx, &project, &row.id).await?;
    Ok(Json(Image::from(&row)))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}/images/{image}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("image" = String, Path, description = "Image name or id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, project, image)): Path<(String, String, String)>,
) -> HandlerResult<StatusCode> {
    let (target, row) = find(&ctx, &project, &image).await?;
    ctx.authorize("compute.delete_image", &target).await?;
    ctx.state.compute.image_delete(&row).await?;
    ctx.record_detail("image", &row.name);
    Ok(StatusCode::NO_CONTENT)
}
