//! Compute nodes, for operators (admin listener only): what each node
//! measured and probed, what its instances use, the overcommit ratios
//! placement applies to it, and whether placement may use it at all (an
//! enrolled node takes no tenant workload until an operator schedules it,
//! a second one confirming under the two-person rule). Tenants never see
//! nodes: an organization only says which node labels it accepts for its
//! workloads.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_compute::nodes::{
    self, AcceptedNodeLabels, EnrollNode, EnrolledNode, Node, NodeLabels, ScheduleNode, Scheduled,
    UpdateNode,
};
use nuage_core::page::Page;
use nuage_core::ApiError;

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
/// this once. The node takes no instance until its agent proved it mounts
/// the control plane's compute directory and an operator scheduled it.
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
    nodes::remove(&ctx.state.store, ctx.state.compute.dir(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make a node schedulable: placement may put tenant instances on it,
/// counting at most the capacity approved here (by default what it reports
/// now). Under the two-person rule the first request answers 202 and waits
/// for a different operator to confirm it (200).
#[utoipa::path(post, path = "/admin/v1/nodes/{node}/schedule", tag = "operator",
    request_body(content = ScheduleNode, description = "Optional bounds", content_type = "application/json"),
    params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, body = Scheduled), (status = 202, body = Scheduled), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn schedule_node(
    ctx: Ctx,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> HandlerResult<(StatusCode, Json<Scheduled>)> {
    ctx.allow_operator("compute.schedule_node", &format!("node:{name}"));
    // The body is optional: none approves what the node reports now.
    let b: ScheduleNode = if body.iter().all(u8::is_ascii_whitespace) {
        ScheduleNode::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    let two_person = ctx.state.compute.two_person_schedule();
    let s = nodes::schedule(
        &ctx.state.store,
        &name,
        &ctx.subject.principal.id,
        two_person,
        &b,
    )
    .await?;
    ctx.record_detail("max_vcpus", &s.node.max_vcpus.to_string());
    ctx.record_detail("max_memory_mib", &s.node.max_memory_mib.to_string());
    ctx.record_detail("schedulable", &s.node.schedulable.to_string());
    if two_person {
        ctx.record_detail("two_person", if s.done { "confirmed" } else { "requested" });
    }
    let status = if s.done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(s)))
}

/// Cordon a node: placement puts nothing more on it (its instances stay);
/// a pending schedule request is dropped.
#[utoipa::path(post, path = "/admin/v1/nodes/{node}/unschedule", tag = "operator",
    params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, body = Node), (status = 404, body = Problem)))]
pub async fn unschedule_node(ctx: Ctx, Path(name): Path<String>) -> HandlerResult<Json<Node>> {
    ctx.allow_operator("compute.unschedule_node", &format!("node:{name}"));
    Ok(Json(nodes::unschedule(&ctx.state.store, &name).await?))
}

/// Replace a node's labels (organizations may require nodes carrying one
/// they accept).
#[utoipa::path(put, path = "/admin/v1/nodes/{node}/labels", tag = "operator",
    request_body = NodeLabels,
    params(("node" = String, Path, description = "Node name or id")),
    responses((status = 200, body = Node), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn label_node(
    ctx: Ctx,
    Path(name): Path<String>,
    Body(b): Body<NodeLabels>,
) -> HandlerResult<Json<Node>> {
    ctx.allow_operator("compute.label_node", &format!("node:{name}"));
    ctx.record_detail("labels", &b.labels.join(","));
    Ok(Json(
        nodes::set_labels(&ctx.state.store, &name, &b.labels).await?,
    ))
}

/// The node labels the organization accepts: its instances run only on
/// nodes carrying one of them (an empty list: any node).
#[utoipa::path(get, path = "/v1/orgs/{org}/node-labels", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = AcceptedNodeLabels), (status = 404, body = Problem)))]
pub async fn get_accepted_labels(ctx: Ctx) -> HandlerResult<Json<AcceptedNodeLabels>> {
    ctx.authorize("compute.get_node_labels", &ctx.org_target()?)
        .await?;
    let org = ctx.org()?;
    Ok(Json(
        nodes::accepted_labels(&ctx.state.store, &org.id).await?,
    ))
}

/// Require that the organization's new instances run only on nodes
/// carrying one of these labels (an empty list lifts the requirement).
#[utoipa::path(put, path = "/v1/orgs/{org}/node-labels", tag = "compute",
    request_body = AcceptedNodeLabels,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = AcceptedNodeLabels), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn set_accepted_labels(
    ctx: Ctx,
    Body(b): Body<AcceptedNodeLabels>,
) -> HandlerResult<Json<AcceptedNodeLabels>> {
    ctx.authorize("compute.set_node_labels", &ctx.org_target()?)
        .await?;
    ctx.record_detail("accepted", &b.accepted.join(","));
    let org = ctx.org()?;
    Ok(Json(
        nodes::set_accepted_labels(&ctx.state.store, &org.id, &b.accepted).await?,
    ))
}
