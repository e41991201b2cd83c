//! Compute nodes, for operators: what each host offers and uses, the
//! overcommit ratios placement applies to it, and whether placement may
//! use it at all (a node enrolled for `nuage agent` takes no tenant
//! workload until an operator schedules it).

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;

use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List compute nodes: accelerator, capacity, use, overcommit, heartbeat.
    List,
    /// Enroll a host for `nuage agent`; its credential is printed once (or
    /// written to a new 0600 file with --token-file).
    Enroll {
        name: String,
        /// Write the credential to this file (created, mode 0600) instead
        /// of printing it.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// Give an enrolled node a new credential (the old one stops working).
    RotateCredential {
        name: String,
        /// Write the credential to this file (created, mode 0600) instead
        /// of printing it.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// Remove a node that holds no instance, and its agent's credential.
    Delete { name: String },
    /// Let placement put tenant instances on a node, counting at most the
    /// capacity it reports now (or the bounds given). Under the two-person
    /// rule a second, different operator runs the same command to confirm.
    Schedule {
        name: String,
        /// The most host vCPUs placement counts for the node.
        #[arg(long)]
        max_vcpus: Option<i64>,
        /// The most host memory placement counts for the node, e.g. 64G.
        #[arg(long)]
        max_memory: Option<String>,
    },
    /// Cordon a node: placement puts nothing more on it (its instances stay).
    Unschedule { name: String },
    /// Replace a node's labels (organizations may require nodes carrying
    /// one they accept); no label clears them.
    Label { name: String, labels: Vec<String> },
    /// Set how many vCPUs (at most 16 per host CPU) and how much memory (at
    /// most 4 × the host's) placement may hand out on a node.
    SetOvercommit {
        node: String,
        /// vCPUs per host CPU (above 0, at most 16).
        #[arg(long)]
        cpu: Option<f64>,
        /// Guest memory per unit of host memory (above 0, at most 4).
        #[arg(long)]
        memory: Option<f64>,
    },
}

const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("SCHEDULABLE", "schedulable"),
    ("ACCEL", "accel"),
    ("VCPUS", "vcpus"),
    ("USED", "used_vcpus"),
    ("CPU X", "cpu_overcommit"),
    ("MEMORY (MIB)", "memory_mib"),
    ("USED", "used_memory_mib"),
    ("MEM X", "memory_overcommit"),
    ("HEARTBEAT (S)", "heartbeat_age_secs"),
];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("schedulable", "schedulable"),
    ("schedule requested by", "schedule_requested_by"),
    ("max vcpus", "max_vcpus"),
    ("max memory (MiB)", "max_memory_mib"),
    ("labels", "labels"),
    ("live", "live"),
    ("accel", "accel"),
    ("accel reason", "accel_reason"),
    ("vcpus", "vcpus"),
    ("used vcpus", "used_vcpus"),
    ("cpu overcommit", "cpu_overcommit"),
    ("memory (MiB)", "memory_mib"),
    ("used memory (MiB)", "used_memory_mib"),
    ("memory overcommit", "memory_overcommit"),
    ("disk bytes", "disk_bytes"),
    ("heartbeat age (s)", "heartbeat_age_secs"),
];

pub async fn run(ctx: &mut Ctx, cmd: NodeCmd) -> Result<u8> {
    let api = ctx.api(Realm::Admin)?;
    let base = ["admin", "v1", "nodes"];
    match cmd {
        NodeCmd::List => {
            let listing = api.list(&base, &Query::new(), &Default::default()).await?;
            output::list(ctx.json, &listing, COLUMNS);
        }
        NodeCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("node {name} removed"));
        }
        NodeCmd::Enroll { name, token_file } => {
            issue_credential(ctx, &name, token_file.as_deref(), false).await?
        }
        NodeCmd::RotateCredential { name, token_file } => {
            issue_credential(ctx, &name, token_file.as_deref(), true).await?
        }
        NodeCmd::Schedule {
            name,
            max_vcpus,
            max_memory,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(v) = max_vcpus {
                body.insert("max_vcpus".into(), json!(v));
            }
            if let Some(m) = max_memory {
                body.insert("max_memory_mib".into(), json!(parse_mib(&m)?));
            }
            let s = api
                .post(&[&base[..], &[name.as_str(), "schedule"]].concat(), &body)
                .await?;
            if ctx.json {
                output::show(true, &s, &[]);
            } else {
                output::show(false, &s["node"], FIELDS);
            }
            if !ctx.json && s["done"] == false {
                eprintln!(
                    "The two-person rule is on: node {name} becomes schedulable once another \
                     operator runs `nuage admin node schedule {name}` too."
                );
            }
        }
        NodeCmd::Unschedule { name } => {
            let n = api
                .post_empty(&[&base[..], &[name.as_str(), "unschedule"]].concat())
                .await?;
            output::show(ctx.json, &n, FIELDS);
        }
        NodeCmd::Label { name, labels } => {
            let n = api
                .put(
                    &[&base[..], &[name.as_str(), "labels"]].concat(),
                    &json!({ "labels": labels }),
                )
                .await?;
            output::show(ctx.json, &n, FIELDS);
        }
        NodeCmd::SetOvercommit { node, cpu, memory } => {
            if cpu.is_none() && memory.is_none() {
                bail!("give --cpu, --memory or both");
            }
            let mut body = serde_json::Map::new();
            if let Some(c) = cpu {
                body.insert("cpu_overcommit".into(), json!(c));
            }
            if let Some(m) = memory {
                body.insert("memory_overcommit".into(), json!(m));
            }
            let n = api
                .patch(&[&base[..], &[node.as_str()]].concat(), &body, None)
                .await?;
            output::show(ctx.json, &n, FIELDS);
        }
    }
    Ok(exit::OK)
}

/// `64G`, `512M`, `2048` (MiB) → MiB.
fn parse_mib(s: &str) -> Result<i64> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("--max-memory {s:?}: write it as 64G, 512M or 2048 (MiB)"))?;
    let factor = match unit
        .trim_end_matches(['i', 'B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" | "M" => 1,
        "G" => 1024,
        "T" => 1024 * 1024,
        _ => bail!("--max-memory {s:?}: write it as 64G, 512M or 2048 (MiB)"),
    };
    n.checked_mul(factor)
        .ok_or_else(|| anyhow::anyhow!("--max-memory {s:?} is too large"))
}

/// A new file for a secret (it must not exist yet), readable by its owner only.
fn new_secret_file(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Enrolls node `name` (or rotates its credential) and hands the
/// credential out once: to a new 0600 file, or to the terminal.
async fn issue_credential(
    ctx: &mut Ctx,
    name: &str,
    token_file: Option<&std::path::Path>,
    rotate: bool,
) -> Result<()> {
    let api = ctx.api(Realm::Admin)?;
    let base = ["admin", "v1", "nodes"];
    // The file is made first: a credential with nowhere to go
    // must not be issued.
    let mut file = token_file.map(new_secret_file).transpose()?;
    let asked = if rotate {
        api.post_empty(&[&base[..], &[name, "credential"]].concat())
            .await
    } else {
        api.post(&base, &json!({ "name": name })).await
    };
    let answer = match asked {
        Ok(a) => a,
        Err(e) => {
            if let Some(p) = &token_file {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    let token = answer["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the control plane's answer holds no credential"))?
        .to_string();
    if let Some(f) = file.as_mut() {
        use std::io::Write;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()?;
    }
    if ctx.json {
        let mut shown = answer.clone();
        if token_file.is_some() {
            shown["token"] = json!(null);
        }
        output::show(true, &shown, &[]);
    } else {
        output::show(false, &answer["node"], FIELDS);
        match &token_file {
            Some(p) => eprintln!(
                "The node's credential is in {} (mode 0600). Start the agent with: \
                 nuage agent --control-plane <admin URL> --token-file {}",
                p.display(),
                p.display()
            ),
            None => {
                println!("token: {token}");
                eprintln!("Copy the credential now: it will not be shown again.");
            }
        }
    }
    Ok(())
}
