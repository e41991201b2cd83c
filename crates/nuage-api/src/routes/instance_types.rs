//! Instance types: the sizes operators offer (`small`, `medium` …) and
//! tenants create instances with. Operators define them on the admin
//! listener; every tenant reads the same catalogue, through its own
//! organization's authorization and audit log like any other request.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use nuage_compute::nodes::{self, InstanceType, PutInstanceType};
use nuage_core::page::{Page, PageParams};
use nuage_core::ApiError;
use nuage_iam::Target;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};

async fn page(ctx: &Ctx, page: &PageParams) -> Result<Page<InstanceType>, ApiError> {
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .instance_type_list(
            page.after.as_deref().unwrap_or(""),
            i64::from(page.limit) + 1,
        )
        .await?;
    let items = rows.iter().map(InstanceType::from).collect();
    Ok(Page::from_rows(items, page.limit, |t| t.name.clone()))
}

/// The instance types instances can be created with.
#[utoipa::path(get, path = "/v1/instance-types", tag = "compute", params(PageParams),
    responses((status = 200, body = Page<InstanceType>), (status = 403, body = Problem)))]
pub async fn list(ctx: Ctx, Q(p): Q<PageParams>) -> HandlerResult<Json<Page<InstanceType>>> {
    // The catalogue is the platform's, but reading it is a decision of the
    // caller's organization (its policies may forbid it), recorded in its log.
    let org = ctx.subject.org.as_ref().ok_or_else(|| {
        ApiError::forbidden("only members of an organization list instance types")
    })?;
    ctx.authorize(
        "compute.list_instance_types",
        &Target::org(&org.id, &org.name),
    )
    .await?;
    Ok(Json(page(&ctx, &p).await?))
}

#[utoipa::path(get, path = "/admin/v1/instance-types", tag = "operator", params(PageParams),
    responses((status = 200, body = Page<InstanceType>)))]
pub async fn admin_list(ctx: Ctx, Q(p): Q<PageParams>) -> HandlerResult<Json<Page<InstanceType>>> {
    ctx.allow_operator("compute.list_instance_types", "platform");
    Ok(Json(page(&ctx, &p).await?))
}

/// Create or replace an instance type (1–64 vCPUs, 64–262144 MiB).
/// Instances already created keep the size they were made with.
#[utoipa::path(put, path = "/admin/v1/instance-types/{name}", tag = "operator",
    request_body = PutInstanceType,
    params(("name" = String, Path, description = "Instance type name")),
    responses((status = 200, body = InstanceType), (status = 201, body = InstanceType),
        (status = 400, body = Problem)))]
pub async fn put(
    ctx: Ctx,
    Path(name): Path<String>,
    Body(b): Body<PutInstanceType>,
) -> HandlerResult<Response> {
    ctx.allow_operator(
        "compute.put_instance_type",
        &format!("instance-type:{name}"),
    );
    let (t, created) = nodes::put_type(&ctx.state.store, &name, &b).await?;
    ctx.record_detail("vcpus", &t.vcpus.to_string());
    ctx.record_detail("memory_mib", &t.memory_mib.to_string());
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(t)).into_response())
}

/// Delete an instance type (instances made from it keep their size).
#[utoipa::path(delete, path = "/admin/v1/instance-types/{name}", tag = "operator",
    params(("name" = String, Path, description = "Instance type name")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(ctx: Ctx, Path(name): Path<String>) -> HandlerResult<StatusCode> {
    ctx.allow_operator(
        "compute.delete_instance_type",
        &format!("instance-type:{name}"),
    );
    if !ctx.state.store.instance_type_delete(&name).await? {
        return Err(ApiError::not_found("instance type", &name).into());
    }
    Ok(StatusCode::NO_CONTENT)
}
