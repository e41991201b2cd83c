//! `nuage agent`: the agent of a compute node on a host of its own.
//!
//! It talks only to the control plane, on the admin listener, with the
//! credential `nuage admin node enroll` gave the operator. It probes the
//! accelerator, reports the host's capacity with every heartbeat
//! (`PUT /agent/v1/node`), and runs the VMs placed on its node with the
//! same reconciler as the agent a server embeds: what to run comes from
//! `GET /agent/v1/work` (a long poll, so a tenant's request starts at
//! once), the keys of the disks from `POST /agent/v1/instances/{id}/keys`,
//! and what it saw goes back to the control plane as reports.
//!
//! The disks are files of the control plane's compute directory, which
//! this host mounts (shared storage) at `--compute-dir`. At every start the
//! agent proves it: it asks for a challenge (`POST
//! /agent/v1/node/challenge`), reads the fresh nonce the control plane
//! wrote there for its node and sends it with its first report; the
//! control plane takes no report (and places nothing) before that, so its
//! credential alone makes no node. Stopping the agent (or restarting it)
//! leaves the VMs running; the next agent re-attaches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;
use nuage_compute::agent::{self as reconciler, Host};
use nuage_compute::link::{InstanceReport, Keys, KeysRequest, Link, Work, WorkList, MAX_WAIT};
use nuage_compute::nodes::{NodeReport, HEARTBEAT_EVERY};
use nuage_compute::ComputeConfig;
use nuage_core::{ApiError, ApiResult};
use serde::de::DeserializeOwned;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The control plane's admin listener, e.g. `https://cp.example:8444`.
    #[arg(long, env = "NUAGE_CONTROL_PLANE")]
    control_plane: String,
    /// File holding the node credential from `nuage admin node enroll`.
    #[arg(long, env = "NUAGE_NODE_TOKEN_FILE")]
    token_file: PathBuf,
    /// The control plane's compute directory, mounted here (shared
    /// storage): the disks of the VMs this node runs.
    #[arg(
        long,
        env = "NUAGE_COMPUTE_DIR",
        default_value = "/var/lib/nuage/compute"
    )]
    compute_dir: PathBuf,
    /// PEM file of a CA to trust for the control plane's TLS certificate,
    /// besides the public roots (a private CA).
    #[arg(long, env = "NUAGE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = HEARTBEAT_EVERY.as_secs())]
    heartbeat_seconds: u64,
    /// Seconds a guest has to power off after an ACPI request before its
    /// QEMU is killed.
    #[arg(long, default_value_t = 60)]
    stop_timeout_seconds: u64,
}

pub async fn run(a: AgentArgs) -> ExitCode {
    match serve(a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nuage agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(a: AgentArgs) -> Result<(), String> {
    let token = std::fs::read_to_string(&a.token_file)
        .map_err(|e| format!("{}: {e}", a.token_file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(format!("{} is empty", a.token_file.display()));
    }
    // Fails early, with the reason, on a directory that is not shared.
    nuage_compute::service::read_compute_id(&a.compute_dir).map_err(|e| e.detail)?;
    let ca_pem = match &a.ca_cert {
        Some(f) => Some(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?),
        None => None,
    };
    let mut http = reqwest::Client::builder().timeout(MAX_WAIT + Duration::from_secs(30));
    if let Some(pem) = &ca_pem {
        let ca = reqwest::Certificate::from_pem(pem)
            .map_err(|e| format!("--ca-cert: not a PEM certificate: {e}"))?;
        http = http.add_root_certificate(ca);
    }
    let http = http.build().map_err(|e| e.to_string())?;
    let link = HttpLink {
        http,
        base: a.control_plane.trim_end_matches('/').to_string(),
        token,
        ca_pem,
        after: Mutex::new(None),
        busy: AtomicBool::new(true),
    };
    let every = Duration::from_secs(a.heartbeat_seconds.max(1));
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);

    // The first report says who this node is, with the answer to a fresh
    // challenge; keep trying until the control plane answers (it may start
    // after its nodes).
    let node = loop {
        match prove(&link, &a).await {
            Ok(node) => break node,
            Err(Report::Refused(e)) => return Err(e),
            Err(Report::Failed(e)) => {
                tracing::warn!(error = %e, "report to the control plane failed; retrying")
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    };
    let node_id = node["id"].as_str().unwrap_or_default().to_string();
    tracing::info!(node = %node["name"], id = %node_id, accel = %node["accel"],
        vcpus = %node["vcpus"], memory_mib = %node["memory_mib"],
        state = %node["state"], "node reported to the control plane");
    if node_id.is_empty() {
        return Err("the control plane's answer names no node".into());
    }
    if node["schedulable"] != true {
        tracing::warn!(node = %node["name"],
            "the node takes no instance until an operator runs `nuage admin node schedule`");
    }

    let mut cfg = ComputeConfig::for_dir(a.compute_dir.clone());
    // Apart from the seeds of a server on the same machine (tests).
    cfg.seed_dir = nuage_compute::service::seed_dir_for(&a.compute_dir.join(&node_id));
    cfg.stop_timeout = Duration::from_secs(a.stop_timeout_seconds);
    let host = Host::new(&cfg).map_err(|e| format!("run directory: {e}"))?;
    let accel = if node["accel"] == "kvm" {
        nuage_qemu::Accel::Kvm
    } else {
        nuage_qemu::Accel::Tcg
    };
    host.set_accel(accel);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drive = reconciler::drive(&host, &link, stop_rx);
    tokio::pin!(drive);
    let outcome = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = &mut drive => break Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        match report(&link, &a).await {
            Ok(_) => {}
            // A refused credential does not heal by retrying.
            Err(Report::Refused(e)) => break Err(e),
            Err(Report::Failed(e)) => {
                tracing::warn!(error = %e, "report to the control plane failed; retrying")
            }
        }
    };
    // Lets the pass under way finish its step; the VMs keep running.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), &mut drive).await;
    host.release_seed_dir();
    tracing::info!("agent stopped");
    outcome
}

enum Report {
    Refused(String),
    Failed(String),
}

/// Asks for a challenge, reads its nonce in the compute directory and
/// answers it with a report.
async fn prove(link: &HttpLink, a: &AgentArgs) -> Result<serde_json::Value, Report> {
    let r = link
        .http
        .post(link.url("/agent/v1/node/challenge"))
        .bearer_auth(&link.token)
        .send()
        .await
        .map_err(|e| Report::Failed(e.to_string()))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        let detail = v["detail"].as_str().unwrap_or("no detail");
        return Err(if matches!(status.as_u16(), 401 | 404) {
            Report::Refused(format!(
                "the control plane refused this node ({status}): {detail}"
            ))
        } else {
            Report::Failed(format!("{status}: {detail}"))
        });
    }
    // The path is built here from the node id, never taken as given: the
    // agent reads nothing of its host but its own challenge.
    let node_id = v["node_id"].as_str().unwrap_or_default();
    if !nuage_compute::nodes::is_node_id(node_id) {
        return Err(Report::Refused(format!(
            "the control plane's challenge names no node: {v}"
        )));
    }
    let file = a
        .compute_dir
        .join(nuage_compute::nodes::challenge_file(node_id));
    let nonce = read_small(&file).map_err(|e| {
        Report::Refused(format!(
            "the challenge the control plane wrote in its compute directory is not readable \
             at {} ({e}): mount the control plane's compute directory (shared storage) at \
             --compute-dir",
            file.display()
        ))
    })?;
    report_with(link, a, Some(nonce.trim().to_string())).await
}

/// A file of at most 1 KiB.
fn read_small(file: &std::path::Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    use std::io::Read;
    let mut s = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(file)?
        .take(1024)
        .read_to_string(&mut s)?;
    Ok(s)
}

async fn report(link: &HttpLink, a: &AgentArgs) -> Result<serde_json::Value, Report> {
    report_with(link, a, None).await
}

async fn report_with(
    link: &HttpLink,
    a: &AgentArgs,
    challenge: Option<String>,
) -> Result<serde_json::Value, Report> {
    let mut body = NodeReport::of_this_host(&a.compute_dir)
        .await
        .map_err(|e| Report::Refused(e.detail))?;
    body.challenge = challenge;
    let r = link
        .http
        .put(link.url("/agent/v1/node"))
        .bearer_auth(&link.token)
        .json(&body)
        .send()
        .await
        .map_err(|e| Report::Failed(e.to_string()))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    let detail = v["detail"].as_str().unwrap_or("no detail");
    if status.is_success() {
        Ok(v)
    } else if matches!(status.as_u16(), 401 | 404 | 409) {
        Err(Report::Refused(format!(
            "the control plane refused this node ({status}): {detail}"
        )))
    } else {
        Err(Report::Failed(format!("{status}: {detail}")))
    }
}

/// The control plane's `/agent/v1` routes, as the reconciler's [`Link`].
struct HttpLink {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The private CA given with `--ca-cert`, for the console relay's
    /// WebSocket too.
    ca_pem: Option<Vec<u8>>,
    /// The generation of the last work list: the next one waits for a
    /// change after it.
    after: Mutex<Option<u64>>,
    /// Something was in flight at the last look: look again soon rather
    /// than wait for a tenant's change.
    busy: AtomicBool,
}

impl HttpLink {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> ApiResult<T> {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ApiError::internal(format!("control plane unreachable: {e}")))?;
        let status = r.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| ApiError::internal(format!("control plane answer: {e}")));
        }
        let bytes = r
            .bytes()
            .await
            .map_err(|e| ApiError::internal(format!("control plane answer: {e}")))?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ApiError::internal(format!(
                "control plane refused ({status}): {}",
                v["detail"].as_str().unwrap_or("no detail")
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("control plane answer: {e}")))
    }
}

/// Whether an instance is between states (or a volume being plugged):
/// the agent looks again without waiting for a tenant's change.
fn in_flight(w: &Work) -> bool {
    if !w.tasks.is_empty() {
        return true;
    }
    let settled = match w.desired.as_str() {
        "running" => w.state == "running",
        "stopped" => w.state == "stopped",
        _ => false,
    };
    !settled
        || w.volumes
            .iter()
            .any(|v| matches!(v.state.as_str(), "attaching" | "detaching"))
}

impl Link for HttpLink {
    async fn work(&self) -> ApiResult<Vec<Work>> {
        let after = self.after.lock().ok().and_then(|a| *a);
        let mut req = self.http.get(self.url("/agent/v1/work"));
        if let (Some(after), false) = (after, self.busy.load(Ordering::Relaxed)) {
            req = req.query(&[
                ("after", after.to_string()),
                ("wait_seconds", MAX_WAIT.as_secs().to_string()),
            ]);
        }
        let list: WorkList = self.send(req).await?;
        self.busy
            .store(list.instances.iter().any(in_flight), Ordering::Relaxed);
        if let Ok(mut a) = self.after.lock() {
            *a = Some(list.generation);
        }
        Ok(list.instances)
    }

    async fn report(&self, instance_id: &str, r: &InstanceReport) -> ApiResult<()> {
        let url = self.url(&format!("/agent/v1/instances/{instance_id}/report"));
        self.send::<()>(self.http.post(url).json(r)).await
    }

    async fn attachment(&self, volume_id: &str, state: &str) -> ApiResult<()> {
        let url = self.url(&format!("/agent/v1/volumes/{volume_id}/attachment"));
        self.send::<()>(
            self.http
                .put(url)
                .json(&serde_json::json!({ "state": state })),
        )
        .await
    }

    async fn task(&self, id: &str, state: &str, message: &str) -> ApiResult<bool> {
        let url = self.url(&format!("/agent/v1/tasks/{id}"));
        let v: serde_json::Value = self
            .send(
                self.http
                    .put(url)
                    .json(&serde_json::json!({ "state": state, "message": message })),
            )
            .await?;
        Ok(v["taken"] == true)
    }

    async fn console(&self, session: &str, serial: tokio::net::UnixStream) -> ApiResult<()> {
        let url = reqwest::Url::parse(&self.url(&format!("/agent/v1/consoles/{session}")))
            .map_err(|e| ApiError::internal(format!("console relay URL: {e}")))?;
        let ws = nuage_cli::open_websocket(url, Some(&self.token), self.ca_pem.as_deref(), AGENT)
            .await
            .map_err(|e| ApiError::internal(format!("console relay: {e:?}")))?;
        tokio::spawn(relay_console(ws, serial));
        Ok(())
    }

    async fn keys(&self, instance_id: &str, req: &KeysRequest) -> ApiResult<Keys> {
        let url = self.url(&format!("/agent/v1/instances/{instance_id}/keys"));
        self.send(self.http.post(url).json(req)).await
    }
}

const AGENT: &str = concat!("nuage-agent/", env!("CARGO_PKG_VERSION"));

/// Copies a VM's serial console to the relay's WebSocket and back until
/// either side closes.
async fn relay_console(
    ws: tokio_tungstenite::WebSocketStream<Box<dyn nuage_cli::Io>>,
    serial: tokio::net::UnixStream,
) {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut serial_rx, mut serial_tx) = serial.into_split();
    let down = async {
        let mut buf = vec![0u8; 4096];
        loop {
            match serial_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let up = async {
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
        _ = down => {}
        _ = up => {}
    }
}
