//! Compute nodes, for operators: what each host offers and uses, and the
//! overcommit ratios placement applies to it.

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
