//! Virtual machine instances of a project, their volumes and consoles.
//! Changes return at once with the instance's new state (`creating`,
//! `starting`, `stopping`, `deleting`); the node agent converges.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Path;
use axum::response::Response;
use axum::Json;
use http::StatusCode;
use nuage_compute::model::{AttachVolume, ConsoleLog, CreateInstance, Instance, Volume};
use nuage_core::model::kms::Justification;
use nuage_core::page::{Page, PageParams};
use nuage_core::ApiError;
use nuage_iam::Target;
use nuage_store::InstanceRow;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::IntoParams;

use crate::ctx::{Body, Ctx, Q};
use crate::problem::{HandlerResult, Problem};

/// The instance `name` of project `project`, or a 404 (also for an
/// instance of another project or organization).
async fn find(ctx: &Ctx, project: &str, name: &str) -> Result<(Target, InstanceRow), ApiError> {
    let p = ctx.project(project).await?;
    let i = ctx
        .state
        .store
        .instance_get(&p.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("instance", name))?;
    Ok((Target::project(&p.org_id, &p.id, &p.name), i))
}

async fn reread(ctx: &Ctx, i: &InstanceRow) -> Result<Instance, ApiError> {
    let row = ctx
        .state
        .store
        .instance_by_id(&i.id)
        .await?
        .ok_or_else(|| ApiError::not_found("instance", &i.name))?;
    Ok(Instance::from(&row))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/instances", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<Instance>), (status = 404, body = Problem)))]
pub async fn list(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Instance>>> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.list_instances")
        .await?;
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .instance_list(
            &p.id,
            page.after.as_deref().unwrap_or(""),
            i64::from(page.limit) + 1,
        )
        .await?;
    let items = rows.iter().map(Instance::from).collect();
    Ok(Json(Page::from_rows(items, page.limit, |i| i.name.clone())))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/instances", tag = "compute",
    request_body = CreateInstance,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = Instance), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(body): Body<CreateInstance>,
) -> HandlerResult<(StatusCode, Json<Instance>)> {
    let (p, _) = ctx
        .project_allowing(&project, "compute.create_instance")
        .await?;
    let (row, uses) = ctx
        .state
        .compute
        .instance_create(
            &p,
            &body,
            &ctx.subject.principal.id,
            &ctx.purpose(Justification::ServiceForPrincipal),
        )
        .await?;
    for u in &uses {
        ctx.record_use(u);
    }
    ctx.record_detail("instance", &row.name);
    Ok((StatusCode::CREATED, Json(Instance::from(&row))))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 200, body = Instance), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
) -> HandlerResult<Json<Instance>> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.get_instance", &target).await?;
    Ok(Json(Instance::from(&row)))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 202, body = Instance), (status = 404, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
) -> HandlerResult<(StatusCode, Json<Instance>)> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.delete_instance", &target).await?;
    ctx.state.compute.instance_delete(&row).await?;
    ctx.record_detail("instance", &row.name);
    Ok((StatusCode::ACCEPTED, Json(reread(&ctx, &row).await?)))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/start", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 202, body = Instance), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn start(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
) -> HandlerResult<(StatusCode, Json<Instance>)> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.start_instance", &target).await?;
    ctx.state.compute.instance_start(&row).await?;
    Ok((StatusCode::ACCEPTED, Json(reread(&ctx, &row).await?)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopParams {
    /// Kill the VM at once instead of asking the guest to power off.
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/stop", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id"), StopParams),
    responses((status = 202, body = Instance), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn stop(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
    Q(params): Q<StopParams>,
) -> HandlerResult<(StatusCode, Json<Instance>)> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.stop_instance", &target).await?;
    ctx.state.compute.instance_stop(&row, params.force).await?;
    if params.force {
        ctx.record_detail("force", "true");
    }
    Ok((StatusCode::ACCEPTED, Json(reread(&ctx, &row).await?)))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/reboot", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 202, body = Instance), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn reboot(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
) -> HandlerResult<(StatusCode, Json<Instance>)> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.reboot_instance", &target).await?;
    ctx.state.compute.instance_reboot(&row).await?;
    Ok((StatusCode::ACCEPTED, Json(reread(&ctx, &row).await?)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/volumes", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 200, body = Vec<Volume>), (status = 404, body = Problem)))]
pub async fn list_volumes(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
) -> HandlerResult<Json<Vec<Volume>>> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.get_instance", &target).await?;
    let vols = ctx.state.store.instance_volumes(&row.id).await?;
    Ok(Json(vols.iter().map(Volume::from).collect()))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/volumes", tag = "compute",
    request_body = AttachVolume,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 202, body = Volume), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn attach_volume(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
    Body(body): Body<AttachVolume>,
) -> HandlerResult<(StatusCode, Json<Volume>)> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.attach_volume", &target).await?;
    let v = ctx
        .state
        .store
        .volume_get(&row.project_id, &body.volume)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &body.volume))?;
    ctx.state.compute.volume_attach(&row, &v).await?;
    ctx.record_detail("volume", &v.name);
    let v = ctx
        .state
        .store
        .volume_by_id(&v.id)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &body.volume))?;
    Ok((StatusCode::ACCEPTED, Json(Volume::from(&v))))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/volumes/{volume}", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id"),
        ("volume" = String, Path, description = "Volume name or id")),
    responses((status = 202, body = Volume), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn detach_volume(
    ctx: Ctx,
    Path((_org, project, instance, volume)): Path<(String, String, String, String)>,
) -> HandlerResult<(StatusCode, Json<Volume>)> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.detach_volume", &target).await?;
    let v = ctx
        .state
        .store
        .volume_get(&row.project_id, &volume)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &volume))?;
    ctx.state.compute.volume_detach(&row, &v).await?;
    ctx.record_detail("volume", &v.name);
    let v = ctx
        .state
        .store
        .volume_by_id(&v.id)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", &volume))?;
    Ok((StatusCode::ACCEPTED, Json(Volume::from(&v))))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleLogParams {
    /// How much of the end of the log, in bytes (default 64 KiB, at most 1 MiB).
    #[serde(default)]
    pub bytes: Option<u64>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/console-log", tag = "compute",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id"), ConsoleLogParams),
    responses((status = 200, body = ConsoleLog), (status = 404, body = Problem)))]
pub async fn console_log(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
    Q(params): Q<ConsoleLogParams>,
) -> HandlerResult<Json<ConsoleLog>> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.console", &target).await?;
    let bytes = params.bytes.unwrap_or(64 << 10).min(1 << 20);
    let output = ctx.state.compute.console_log(&row, bytes)?;
    Ok(Json(ConsoleLog { output }))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/instances/{instance}/console", tag = "compute",
    description = "The interactive serial console, as a WebSocket: binary messages carry the bytes both ways.",
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name or id"),
        ("instance" = String, Path, description = "Instance name or id")),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn console(
    ctx: Ctx,
    Path((_org, project, instance)): Path<(String, String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HandlerResult<Response> {
    let (target, row) = find(&ctx, &project, &instance).await?;
    ctx.authorize("compute.console", &target).await?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(
            "websocket_required",
            format!("the console is a WebSocket: {e}"),
        )
    })?;
    if row.state != "running" {
        return Err(ApiError::conflict(
            "instance_not_running",
            format!("instance {} is {}, not running", row.name, row.state),
        )
        .into());
    }
    if !ctx.state.compute.is_local(&row) {
        return relayed_console(&ctx, &row, ws).await;
    }
    let socket = ctx.state.compute.console_socket(&row)?;
    let serial = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|e| {
            ApiError::conflict("console_busy", format!("the console is not available: {e}"))
        })?;
    ctx.record_detail("console", "opened");
    Ok(ws.on_upgrade(move |ws| bridge(ws, serial)))
}

/// The console of a VM on a node of its own: its agent dials back (a node
/// task) and the two WebSockets are bridged here.
async fn relayed_console(
    ctx: &Ctx,
    row: &InstanceRow,
    ws: WebSocketUpgrade,
) -> HandlerResult<Response> {
    let compute = &ctx.state.compute;
    let node_id = row.node_id.clone().unwrap_or_default();
    let (session, agent) = ctx.state.consoles.open(&node_id);
    let task = nuage_compute::tasks::NodeTask::Console {
        session: session.clone(),
    };
    let (task_id, _) = match compute.post_task(row, &task).await {
        Ok(t) => t,
        Err(e) => {
            ctx.state.consoles.close(&session);
            return Err(e.into());
        }
    };
    // The agent's WebSocket, unless it could not reach the console (its
    // task failed) or never took the task.
    let mut agent = agent;
    let start = std::time::Instant::now();
    let answered = loop {
        tokio::select! {
            a = &mut agent => break a.ok(),
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                let failed = compute
                    .store()
                    .node_task_get(&task_id)
                    .await?
                    .is_some_and(|t| t.state == "failed");
                if failed || start.elapsed() > nuage_compute::tasks::CLAIM_WITHIN {
                    break None;
                }
            }
        }
    };
    ctx.state.consoles.close(&session);
    let Some(agent) = answered else {
        let task = compute.store().node_task_get(&task_id).await?;
        let _ = compute.drop_task(&task_id, &node_id).await?;
        compute.store().node_task_delete(&task_id).await?;
        return Err(match task {
            Some(t) if t.state == "failed" => ApiError::conflict("console_busy", t.message),
            _ => nuage_compute::tasks::node_unresponsive(row, "open its console"),
        }
        .into());
    };
    compute.store().node_task_delete(&task_id).await?;
    ctx.record_detail("console", "opened");
    ctx.record_detail("relayed_by", &node_id);
    Ok(ws.on_upgrade(move |ws| crate::relay::bridge(ws, agent)))
}

/// Copies bytes both ways until either side closes; when the VM's side
/// ends (it stopped), the client gets a Close. The serial side is always
/// read (a stalled reader would freeze the guest's console), so output the
/// WebSocket cannot take fast enough is dropped.
async fn bridge(ws: WebSocket, serial: tokio::net::UnixStream) {
    use futures::{SinkExt, StreamExt};
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut serial_rx, mut serial_tx) = serial.into_split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match serial_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = out_tx.try_send(buf[..n].to_vec());
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        // Ends when the reader is done and every chunk is sent.
        while let Some(chunk) = out_rx.recv().await {
            if ws_tx.send(Message::Binary(chunk.into())).await.is_err() {
                return;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    });
    let input = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data: Vec<u8> = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if serial_tx.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = input => {}
        _ = writer => {}
    }
    reader.abort();
}
