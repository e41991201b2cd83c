//! Compute nodes, for operators (admin listener only): what each node
//! measured and probed, what its instances use, and the overcommit ratios
//! placement applies to it. Tenants never see nodes.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_compute::nodes::{self, EnrollNode, EnrolledNode, Node, UpdateNode};
use nuage_core::page::Page;

use crate::ctx::{Body, Ctx};
use crate::problem::{HandlerResult, Problem};

/// Every compute node (a handful: one page).
#[utoipa::path(get, path = "/admin/v1/nodes", tag = "operator",
    responses((status = 200, body = Page<Node>)))]
pub async fn list_nodes(ctx: Ctx) -> HandlerResult<Json<Page<Node>>> {
    ctx.allow_operator("compute.list_nodes", "platform");
    Ok(Json(Page {
        items: nodes::list(&ctx.state.store).await?,
        next_page_token: None,
    }))
}

/// Set a node's overcommit ratios: vCPUs (above 0, at most 16) and memory
/// (above 0, at most 4) placement may hand out per unit of the host's.
#[utoipa::path(patch, path = "/admin/v1/nodes/{node}", tag = "operator", request_body = UpdateNode,
    params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, body = Node), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update_node(
    ctx: Ctx,
    Path(name): Path<String>,
    Body(b): Body<UpdateNode>,
) -> HandlerResult<Json<Node>> {
    ctx.allow_operator("compute.update_node", &format!("node:{name}"));
    if let Some(c) = b.cpu_overcommit {
        ctx.record_detail("cpu_overcommit", &c.to_string());
    }
    if let Some(m) = b.memory_overcommit {
        ctx.record_detail("memory_overcommit", &m.to_string());
    }
    Ok(Json(
        nodes::set_overcommit(&ctx.state.store, &name, &b).await?,
    ))
}

/// Enroll a node for `nuage agent`: the answer holds its credential, shown
/// this once. The node takes no instance until its agent reports.
#[utoipa::path(post, path = "/admin/v1/nodes", tag = "operator", request_body = EnrollNode,
    responses((status = 201, body = EnrolledNode), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn enroll_node(
    ctx: Ctx,
    Body(b): Body<EnrollNode>,
) -> HandlerResult<(StatusCode, Json<EnrolledNode>)> {
    ctx.allow_operator("compute.enroll_node", &format!("node:{}", b.name));
    let (node, token) = nodes::enroll(&ctx.state.store, &b.name).await?;
    Ok((StatusCode::CREATED, Json(EnrolledNode { node, token })))
}

/// Give an enrolled node a new credential (shown this once); the old one
/// stops working at once.
#[utoipa::path(post, path = "/admin/v1/nodes/{node}/credential", tag = "operator",
    params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, body = EnrolledNode), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn rotate_node_credential(
    ctx: Ctx,
    Path(name): Path<String>,
) -> HandlerResult<Json<EnrolledNode>> {
    ctx.allow_operator("compute.rotate_node_credential", &format!("node:{name}"));
    let (node, token) = nodes::rotate_credential(&ctx.state.store, &name).await?;
    Ok(Json(EnrolledNode { node, token }))
}

/// Remove a node and its agent's credential: refused while instances are
/// placed on it, and for the embedded node of a running server.
#[utoipa::path(delete, path = "/admin/v1/nodes/{node}", tag = "operator",
    params(("node" = String, Path, description = "Node name or id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_node(ctx: Ctx, Path(name): Path<String>) -> HandlerResult<StatusCode> {
    ctx.allow_operator("compute.delete_node", &format!("node:{name}"));
    nodes::remove(&ctx.state.store, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
