//! What `nuage agent` calls, on the admin listener, with its node's
//! credential (never a person's token): its heartbeat, the instances
//! placed on its node, the keys to open their disks, and what it saw.
//! Each route is scoped to the calling node; another node's instances and
//! volumes are a 404. Every call is in the audit log as `node:<name>`,
//! key releases with the keys used; a key release is in the tenant's own
//! audit log too, so a tenant sees which node received its disk keys, and
//! when. A node proves it mounts the control plane's compute directory by
//! answering a challenge written there, never by naming anything an error
//! could reveal.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::Path;
use axum::response::Response;
use axum::Json;
use http::StatusCode;
use nuage_compute::link::{InstanceReport, Keys, KeysRequest, WorkList};
use nuage_compute::nodes::{self, Node, NodeChallenge, NodeReport};
use nuage_core::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ctx::{Body, NodeCtx, Q};
use crate::problem::{HandlerResult, Problem};

/// An agent reports what it measured on its host; also its heartbeat.
/// Refused (409) until it answered a challenge with the nonce written in
/// the control plane's compute directory.
#[utoipa::path(put, path = "/agent/v1/node", tag = "agent", request_body = NodeReport,
    responses((status = 200, body = Node), (status = 400, body = Problem), (status = 401, body = Problem), (status = 409, body = Problem)))]
pub async fn report_node(ctx: NodeCtx, Body(b): Body<NodeReport>) -> HandlerResult<Json<Node>> {
    ctx.allow_self("compute.report_node");
    if b.challenge.is_some() {
        ctx.record_detail("challenge", "answered");
    }
    let dir = ctx.state.compute.dir();
    Ok(Json(
        nodes::report(&ctx.state.store, &ctx.node, &b, dir).await?,
    ))
}

/// A fresh challenge: the control plane writes a nonce for the calling
/// node in its compute directory and says where; the agent reads it
/// through the directory it mounted and sends it with its next report.
#[utoipa::path(post, path = "/agent/v1/node/challenge", tag = "agent",
    responses((status = 200, body = NodeChallenge), (status = 401, body = Problem)))]
pub async fn node_challenge(ctx: NodeCtx) -> HandlerResult<Json<NodeChallenge>> {
    ctx.allow_self("compute.node_challenge");
    let dir = ctx.state.compute.dir();
    Ok(Json(
        nodes::challenge(&ctx.state.store, dir, &ctx.node).await?,
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkQuery {
    /// The generation of the agent's last answer: wait for a change.
    after: Option<u64>,
    /// How long to wait for a change, seconds (at most 10).
    wait_seconds: Option<u64>,
}

/// The instances placed on the calling node, with their volumes. With
/// `after`, the answer waits until tenants change something (or
/// `wait_seconds` pass).
#[utoipa::path(get, path = "/agent/v1/work", tag = "agent", params(WorkQuery),
    responses((status = 200, body = WorkList), (status = 401, body = Problem)))]
pub async fn work(ctx: NodeCtx, Q(q): Q<WorkQuery>) -> HandlerResult<Json<WorkList>> {
    ctx.allow_self("compute.node_work");
    let wait = std::time::Duration::from_secs(q.wait_seconds.unwrap_or(0));
    Ok(Json(
        ctx.state
            .compute
            .work_after(&ctx.node.id, q.after, wait)
            .await?,
    ))
}

/// What the agent saw or did to an instance of its node.
#[utoipa::path(post, path = "/agent/v1/instances/{instance}/report", tag = "agent",
    request_body = InstanceReport,
    params(("instance" = String, Path, description = "Instance id")),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn report_instance(
    ctx: NodeCtx,
    Path(instance): Path<String>,
    Body(b): Body<InstanceReport>,
) -> HandlerResult<StatusCode> {
    ctx.allow_self("compute.report_instance");
    ctx.record_detail("instance", &instance);
    if let InstanceReport::State { state, .. } = &b {
        ctx.record_detail("state", state);
    }
    ctx.state
        .compute
        .take_report(&ctx.node.id, &instance, &b)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A volume's attachment, as the agent settled it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// `attached` or `available`.
    pub state: String,
}

/// The agent plugged (`attached`) or unplugged (`available`) a volume of
/// an instance of its node.
#[utoipa::path(put, path = "/agent/v1/volumes/{volume}/attachment", tag = "agent",
    request_body = Attachment,
    params(("volume" = String, Path, description = "Volume id")),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn settle_attachment(
    ctx: NodeCtx,
    Path(volume): Path<String>,
    Body(b): Body<Attachment>,
) -> HandlerResult<StatusCode> {
    ctx.allow_self("compute.report_attachment");
    ctx.record_detail("volume", &volume);
    ctx.record_detail("state", &b.state);
    ctx.state
        .compute
        .take_attachment(&ctx.node.id, &volume, &b.state)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The keys of volumes an instance of the calling node holds, and (for
/// its seed) its user-data. Each key use is in this call's audit entry,
/// and the release in the tenant organization's audit log too.
#[utoipa::path(post, path = "/agent/v1/instances/{instance}/keys", tag = "agent",
    request_body = KeysRequest,
    params(("instance" = String, Path, description = "Instance id")),
    responses((status = 200, body = Keys), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn instance_keys(
    ctx: NodeCtx,
    Path(instance): Path<String>,
    Body(b): Body<KeysRequest>,
) -> HandlerResult<Json<Keys>> {
    ctx.allow_self("compute.node_keys");
    ctx.record_detail("instance", &instance);
    ctx.record_detail("volumes", &b.volumes.join(","));
    let (keys, uses, placed) = ctx
        .state
        .compute
        .keys_for(&ctx.node.id, &instance, &b)
        .await?;
    // One entry, several keys: the first use in full, then every key and
    // data key released.
    if let Some(first) = uses.first() {
        ctx.record_use(first);
    }
    let all = |field: &str| {
        let mut v: Vec<String> = uses
            .iter()
            .filter_map(|u| u.details().remove(field))
            .collect();
        v.dedup();
        v.join(",")
    };
    ctx.record_detail("key_ids", &all("key_id"));
    ctx.record_detail("data_keys", &all("data_key"));
    // The tenant's own log: which node received its keys, and when.
    let details = [
        ("node", ctx.node.name.clone()),
        ("node_id", ctx.node.id.clone()),
        ("instance", placed.id.clone()),
        ("project_id", placed.project_id.clone()),
        ("volumes", b.volumes.join(",")),
        ("user_data", (keys.user_data.is_some()).to_string()),
        ("key_ids", all("key_id")),
        ("data_keys", all("data_key")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ctx.record_in_org_log(
        &placed.org_id,
        "compute.node_keys",
        &format!("instance:{}", placed.name),
        ("POST", &format!("/agent/v1/instances/{instance}/keys")),
        details,
    )
    .await?;
    Ok(Json(keys))
}

/// A step of a task, as the agent takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskStep {
    /// `running` (the agent claims it), `done` or `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub message: String,
}

/// Whether the step was taken.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskStepTaken {
    /// False when the task was cancelled (its request gave up) or another
    /// pass took it: the agent leaves it alone.
    pub taken: bool,
}

/// The agent claims a task of its node (`running`), then says how it
/// ended (`done` or `failed`).
#[utoipa::path(put, path = "/agent/v1/tasks/{task}", tag = "agent",
    request_body = TaskStep,
    params(("task" = String, Path, description = "Task id")),
    responses((status = 200, body = TaskStepTaken), (status = 400, body = Problem)))]
pub async fn task_step(
    ctx: NodeCtx,
    Path(task): Path<String>,
    Body(b): Body<TaskStep>,
) -> HandlerResult<Json<TaskStepTaken>> {
    ctx.allow_self("compute.node_task");
    ctx.record_detail("task", &task);
    ctx.record_detail("state", &b.state);
    let taken = ctx
        .state
        .compute
        .take_task_step(&ctx.node.id, &task, &b.state, &b.message)
        .await?;
    Ok(Json(TaskStepTaken { taken }))
}

/// The agent's end of a console relay: a WebSocket carrying the serial
/// console of a VM of the calling node to the tenant who opened it.
#[utoipa::path(get, path = "/agent/v1/consoles/{session}", tag = "agent",
    description = "A WebSocket: binary messages carry the console's bytes both ways.",
    params(("session" = String, Path, description = "Relay session from a console task")),
    responses((status = 101), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn console_relay(
    ctx: NodeCtx,
    Path(session): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HandlerResult<Response> {
    ctx.allow_self("compute.node_console");
    let ws = ws.map_err(|e| {
        ApiError::bad_request(
            "websocket_required",
            format!("the console is a WebSocket: {e}"),
        )
    })?;
    let tenant = ctx
        .state
        .consoles
        .take(&session, &ctx.node.id)
        .ok_or_else(|| ApiError::not_found("console session", &session))?;
    Ok(ws.on_upgrade(move |socket| async move {
        let _ = tenant.send(socket);
    }))
}
