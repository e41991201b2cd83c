//! Buckets of a project over the REST API (objects themselves go through
//! the S3 endpoint). Same rules and actions as S3: `s3.*`.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_core::page::{Page, PageParams};
use nuage_core::ApiError;
use nuage_iam::Target;
use nuage_objects::buckets::{StorageQuota, StorageUsage};
use nuage_objects::Bucket;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBucket {
    /// Unique in the installation; S3 DNS rules (3–63 of a-z, 0-9, '-', '.').
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBucket {
    /// Replaces the bucket's quota (`{}` removes it). Writes that would
    /// exceed it are refused; lowering it below the usage deletes nothing.
    #[serde(default)]
    pub quota: Option<StorageQuota>,
}

/// A project's object storage: usage summed over its buckets, and the
/// quota its operator set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectStorage {
    pub usage: StorageUsage,
    pub quota: StorageQuota,
}

impl ProjectStorage {
    pub(crate) async fn of(ctx: &Ctx, project_id: &str) -> Result<ProjectStorage, ApiError> {
        let (bytes, objects, qb, qo) = ctx.state.store.project_storage(project_id).await?;
        Ok(ProjectStorage {
            usage: StorageUsage { bytes, objects },
            quota: StorageQuota::from_stored(qb, qo),
        })
    }
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/storage", tag = "buckets",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id")),
    responses((status = 200, body = ProjectStorage), (status = 404, body = Problem)))]
pub async fn project_storage(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
) -> HandlerResult<Json<ProjectStorage>> {
    let p = ctx.project(&project).await?;
    ctx.authorize(
        "s3.list_buckets",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    Ok(Json(ProjectStorage::of(&ctx, &p.id).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/buckets", tag = "buckets",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<Bucket>), (status = 404, body = Problem)))]
pub async fn list(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Bucket>>> {
    let p = ctx.project(&project).await?;
    ctx.authorize(
        "s3.list_buckets",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .bucket_list(
            &p.org_id,
            Some(&p.id),
            page.after.as_deref().unwrap_or(""),
            i64::from(page.limit) + 1,
        )
        .await?;
    let items = rows.iter().map(Bucket::from).collect();
    Ok(Json(Page::from_rows(items, page.limit, |b| b.name.clone())))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/buckets", tag = "buckets",
    request_body = CreateBucket,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = Bucket), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(body): Body<CreateBucket>,
) -> HandlerResult<(StatusCode, Json<Bucket>)> {
    let p = ctx.project(&project).await?;
    ctx.authorize(
        "s3.create_bucket",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    let row = nuage_objects::buckets::create(
        &ctx.state.store,
        &ctx.state.kms,
        &p,
        &body.name,
        &ctx.subject.principal.id,
    )
    .await?;
    ctx.record_detail("bucket", &row.name);
    Ok((StatusCode::CREATED, Json(Bucket::from(&row))))
}

/// The bucket `name` of project `project`, or a 404 (also for a bucket of
/// another project or organization).
async fn find(ctx: &Ctx, project: &str, name: &str) -> Result<(Target, Bucket), ApiError> {
    let p = ctx.project(project).await?;
    let b = nuage_objects::buckets::get_in_org(&ctx.state.store, &p.org_id, name)
        .await?
        .filter(|b| b.project_id == p.id)
        .ok_or_else(|| ApiError::not_found("bucket", name))?;
    Ok((Target::project(&p.org_id, &p.id, &p.name), Bucket::from(&b)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/buckets/{bucket}", tag = "buckets",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("bucket" = String, Path, description = "Bucket name")),
    responses((status = 200, body = Bucket), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, project, bucket)): Path<(String, String, String)>,
) -> HandlerResult<Json<Bucket>> {
    let (target, b) = find(&ctx, &project, &bucket).await?;
    ctx.authorize("s3.get_bucket", &target).await?;
    Ok(Json(b))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}/buckets/{bucket}", tag = "buckets",
    request_body = UpdateBucket,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("bucket" = String, Path, description = "Bucket name")),
    responses((status = 200, body = Bucket), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update(
    ctx: Ctx,
    Path((_org, project, bucket)): Path<(String, String, String)>,
    Body(body): Body<UpdateBucket>,
) -> HandlerResult<Json<Bucket>> {
    let (target, b) = find(&ctx, &project, &bucket).await?;
    ctx.authorize("s3.put_bucket_settings", &target).await?;
    if let Some(q) = body.quota {
        let (bytes, objects) = q.to_stored()?;
        ctx.state
            .store
            .bucket_set_quota(&b.id, bytes, objects)
            .await?;
        ctx.record_detail("quota_bytes", &bytes.to_string());
        ctx.record_detail("quota_objects", &objects.to_string());
    }
    let (_, b) = find(&ctx, &project, &bucket).await?;
    Ok(Json(b))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}/buckets/{bucket}", tag = "buckets",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("bucket" = String, Path, description = "Bucket name")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, project, bucket)): Path<(String, String, String)>,
) -> HandlerResult<StatusCode> {
    let (target, b) = find(&ctx, &project, &bucket).await?;
    ctx.authorize("s3.delete_bucket", &target).await?;
    ctx.state.store.bucket_delete(&b.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
