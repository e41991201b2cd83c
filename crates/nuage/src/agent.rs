//! `nuage agent`: the agent of a compute node on a host of its own.
//!
//! It talks only to the control plane, on the admin listener, with the
//! credential `nuage node enroll` gave the operator: it probes the
//! accelerator once, then reports the host's capacity with every heartbeat
//! (`PUT /agent/v1/node`). The node is then live, in standby: running the
//! VMs placed on it, as the agent embedded in `nuage server` does, is the
//! next step, and placement leaves standby nodes alone until then.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nuage_compute::nodes::{NodeReport, HEARTBEAT_EVERY};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The control plane's admin listener, e.g. `https://cp.example:8444`.
    #[arg(long, env = "NUAGE_CONTROL_PLANE")]
    control_plane: String,
    /// File holding the node credential from `nuage node enroll`.
    #[arg(long, env = "NUAGE_NODE_TOKEN_FILE")]
    token_file: PathBuf,
    /// Where this node keeps its disks (its filesystem's size is reported).
    #[arg(
        long,
        env = "NUAGE_COMPUTE_DIR",
        default_value = "/var/lib/nuage/compute"
    )]
    compute_dir: PathBuf,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = HEARTBEAT_EVERY.as_secs())]
    heartbeat_seconds: u64,
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
    std::fs::create_dir_all(&a.compute_dir)
        .map_err(|e| format!("{}: {e}", a.compute_dir.display()))?;
    let url = format!("{}/agent/v1/node", a.control_plane.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let every = Duration::from_secs(a.heartbeat_seconds.max(1));
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut first = true;
    loop {
        match report(&http, &url, &token, &a).await {
            Ok(node) => {
                if first {
                    tracing::info!(node = %node["name"], accel = %node["accel"],
                        vcpus = %node["vcpus"], memory_mib = %node["memory_mib"],
                        state = %node["state"], "node reported to the control plane");
                    first = false;
                }
            }
            // A refused credential does not heal by retrying.
            Err(Report::Refused(e)) => return Err(e),
            Err(Report::Failed(e)) => {
                tracing::warn!(error = %e, "report to the control plane failed; retrying")
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

enum Report {
    Refused(String),
    Failed(String),
}

async fn report(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    a: &AgentArgs,
) -> Result<serde_json::Value, Report> {
    let body = NodeReport::of_this_host(&a.compute_dir)
        .await
        .map_err(|e| Report::Failed(e.detail))?;
    let r = http
        .put(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| Report::Failed(e.to_string()))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(v)
    } else if status.as_u16() == 401 || status.as_u16() == 404 {
        Err(Report::Refused(format!(
            "the control plane refused this node ({status}): {}",
            v["detail"].as_str().unwrap_or("no detail")
        )))
    } else {
        Err(Report::Failed(format!(
            "{status}: {}",
            v["detail"].as_str().unwrap_or("no detail")
        )))
    }
}
