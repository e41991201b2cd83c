//! Projects: the containers of every infrastructure resource.

use axum::Json;
use http::StatusCode;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{CreateProject, Project, UpdateProject};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::Target;

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::problem::{HandlerResult, Problem};

pub(crate) const MAX_LABELS: usize = 64;

fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::bad_request(
            "invalid_labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in labels {
        name::validate("label key", k)?;
        if v.len() > 256 {
            return Err(ApiError::bad_request(
                "invalid_labels",
                format!("label {k:?}: value over 256 bytes"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_description(d: &str) -> Result<(), ApiError> {
    if d.len() > 1024 {
        return Err(ApiError::bad_request(
            "invalid_description",
            "description over 1024 bytes",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects", tag = "projects",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<Project>), (status = 404, body = Problem)))]
pub async fn list(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<Project>>> {
    ctx.authorize("project.list", &ctx.org_target()?).await?;
    let page = page.validate()?;
    Ok(Json(
        ctx.state.store.project_list(&ctx.org()?.id, &page).await?,
    ))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects", tag = "projects", request_body = CreateProject,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = Project), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create(ctx: Ctx, Body(body): Body<CreateProject>) -> HandlerResult<Tagged<Project>> {
    ctx.authorize("project.create", &ctx.org_target()?).await?;
    name::validate("project", &body.name)?;
    check_labels(&body.labels)?;
    check_description(&body.description)?;
    let org = ctx.org()?;
    let now = now_ms();
    let p = Project {
        id: new_id(Kind::Project),
        org_id: org.id.clone(),
        name: body.name,
        description: body.description,
        labels: body.labels,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    ctx.state.store.project_create(&p, org.max_projects).await?;
    Ok(Tagged(StatusCode::CREATED, p, 1))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}", tag = "projects",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id")),
    responses((status = 200, body = Project), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    axum::extract::Path((_org, project)): axum::extract::Path<(String, String)>,
) -> HandlerResult<Tagged<Project>> {
    let p = ctx.project(&project).await?;
    ctx.authorize("project.get", &Target::project(&p.org_id, &p.id, &p.name))
        .await?;
    let g = p.generation;
    Ok(Tagged(StatusCode::OK, p, g))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}", tag = "projects", request_body = UpdateProject,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), IfMatch),
    responses((status = 200, body = Project), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn update(
    ctx: Ctx,
    axum::extract::Path((_org, project)): axum::extract::Path<(String, String)>,
    IfMatch(gen): IfMatch,
    Body(body): Body<UpdateProject>,
) -> HandlerResult<Tagged<Project>> {
    let p = ctx.project(&project).await?;
    ctx.authorize(
        "project.update",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    if let Some(l) = &body.labels {
        check_labels(l)?;
    }
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    let updated = ctx
        .state
        .store
        .project_update(&p.org_id, &p.id, gen, |p| {
            if let Some(d) = body.description {
                p.description = d;
            }
            if let Some(l) = body.labels {
                p.labels = l;
            }
            Ok(())
        })
        .await?;
    let g = updated.generation;
    Ok(Tagged(StatusCode::OK, updated, g))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}", tag = "projects",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), IfMatch),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    axum::extract::Path((_org, project)): axum::extract::Path<(String, String)>,
    IfMatch(gen): IfMatch,
) -> HandlerResult<StatusCode> {
    let p = ctx.project(&project).await?;
    ctx.authorize(
        "project.delete",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    ctx.state
        .store
        .project_delete(&p.org_id, &p.id, gen)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
