//! Compute nodes and instance types.
//!
//! A node registers itself at start with what it measured (accelerator,
//! vCPUs, memory, disk) and then proves it is alive with heartbeats;
//! placement only trusts nodes whose heartbeat is recent. Operators tune a
//! node's overcommit ratios and define the instance types tenants choose
//! from (`--type small`), so sizes are a platform decision, not a guess of
//! each tenant.

use std::path::Path;

use nuage_core::id::{new_id, Kind};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError, ApiResult};
use nuage_iam::{ActionDef, Level};
use nuage_qemu::accel::AccelProbe;
use nuage_store::{InstanceTypeRow, NodeRow, NodeUsage, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use utoipa::ToSchema;

use crate::placement::check_request;

/// Tenant actions on the instance type catalogue (registered at start).
pub const ACTIONS: &[ActionDef] = &[ActionDef {
    name: "compute.list_instance_types",
    level: Level::Read,
    also: &[],
}];

/// Ratios a new node starts with: vCPUs are cheap to share, memory is not.
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;
pub const DEFAULT_MEMORY_OVERCOMMIT: f64 = 1.0;
/// The largest ratios an operator may set.
pub const MAX_CPU_OVERCOMMIT: f64 = 16.0;
pub const MAX_MEMORY_OVERCOMMIT: f64 = 4.0;
/// How often a node signs of life, and how old a sign may be before
/// placement stops trusting the node.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
pub const HEARTBEAT_STALE_MS: i64 = 60_000;

/// The accelerator of this host, probed once per process: the answer does
/// not change while we run, and the KVM probe boots a guest for a second.
pub async fn local_accel() -> AccelProbe {
    static PROBE: OnceCell<AccelProbe> = OnceCell::const_new();
    PROBE.get_or_init(nuage_qemu::accel::detect).await.clone()
}

/// What this host offers guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: i64,
    pub memory_mib: i64,
    /// Size of the filesystem holding the disks.
    pub disk_bytes: i64,
}

/// Measures this host: logical CPUs, `MemTotal` of `/proc/meminfo`, and
/// the size of the filesystem of `compute_dir`.
pub fn capacity(compute_dir: &Path) -> ApiResult<Capacity> {
    let vcpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| ApiError::internal(format!("/proc/meminfo: {e}")))?;
    let memory_mib = mem_total_mib(&meminfo)
        .ok_or_else(|| ApiError::internal("/proc/meminfo has no MemTotal"))?;
    let fs = rustix::fs::statvfs(compute_dir)
        .map_err(|e| ApiError::internal(format!("statvfs {}: {e}", compute_dir.display())))?;
    let disk_bytes = i64::try_from(fs.f_blocks.saturating_mul(fs.f_frsize)).unwrap_or(i64::MAX);
    Ok(Capacity {
        vcpus,
        memory_mib,
        disk_bytes,
    })
}

/// `MemTotal:  16314204 kB` → MiB.
fn mem_total_mib(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// This host's name: the kernel's hostname, else `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Registers (or re-registers) this host as node `name`: probes the
/// accelerator, measures capacity, marks it `ready` with a fresh heartbeat.
/// Overcommit ratios an operator set on an earlier run are kept.
pub async fn register_local(store: &Store, name: &str, compute_dir: &Path) -> ApiResult<NodeRow> {
    check_node_name(name)?;
    let cap = capacity(compute_dir)?;
    let accel = local_accel().await;
    let now = now_ms();
    let row = NodeRow {
        id: new_id(Kind::Project).replacen("prj_", "node_", 1),
        name: name.to_string(),
        accel: accel.accel.as_str().to_string(),
        accel_reason: accel.reason,
        vcpus: cap.vcpus,
        memory_mib: cap.memory_mib,
        disk_bytes: cap.disk_bytes,
        cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
        memory_overcommit: DEFAULT_MEMORY_OVERCOMMIT,
        state: "ready".into(),
        heartbeat_at: now,
        created_at: now,
    };
    let row = store.node_upsert(&row).await?;
    tracing::info!(
        node = %row.name, id = %row.id, accel = %row.accel, reason = %row.accel_reason,
        vcpus = row.vcpus, memory_mib = row.memory_mib, "compute node registered"
    );
    Ok(row)
}

/// A sign of life of node `node_id`.
pub async fn heartbeat(store: &Store, node_id: &str) -> ApiResult<()> {
    store.node_heartbeat(node_id, now_ms()).await
}

// ---- nodes of their own: `nuage agent` ----------------------------------------

/// State of an enrolled node whose agent has not reported yet.
pub const STATE_ENROLLED: &str = "enrolled";
/// State of a node whose agent is alive: it takes new instances.
pub const STATE_READY: &str = "ready";

fn check_node_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "node name {name:?} must be 1 to 253 printable characters"
        )));
    }
    Ok(())
}

/// Enrolls node `name` for `nuage agent`: records it without capacity and
/// returns its credential, shown this once (only its SHA-256 is kept).
pub async fn enroll(store: &Store, name: &str) -> ApiResult<(Node, String)> {
    check_node_name(name)?;
    let token = nuage_iam::secret::new_token();
    let now = now_ms();
    let row = NodeRow {
        id: new_id(Kind::Project).replacen("prj_", "node_", 1),
        name: name.to_string(),
        accel: String::new(),
        accel_reason: "its agent has not reported yet".into(),
        vcpus: 0,
        memory_mib: 0,
        disk_bytes: 0,
        cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
        memory_overcommit: DEFAULT_MEMORY_OVERCOMMIT,
        state: STATE_ENROLLED.into(),
        heartbeat_at: 0,
        created_at: now,
    };
    let row = store
        .node_enroll(&row, &nuage_iam::secret::hash_token(&token))
        .await?;
    Ok((Node::of(&row, NodeUsage::default(), now), token))
}

/// The enrolled node holding credential `token`.
pub async fn authenticate(store: &Store, token: &str) -> ApiResult<NodeRow> {
    store
        .node_by_token(&nuage_iam::secret::hash_token(token))
        .await?
        .ok_or_else(|| ApiError::unauthenticated("unknown node credential"))
}

/// What an agent measured on its host: sent at start and with every
/// heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why the agent's probe chose `accel`.
    pub accel_reason: String,
    /// Logical CPUs of the host (at least 1).
    pub vcpus: i64,
    /// Memory of the host, MiB (at least 64).
    pub memory_mib: i64,
    /// Size of the filesystem holding the disks, bytes.
    pub disk_bytes: i64,
    /// The id in the node's compute directory (`compute-id`): it must be
    /// the control plane's own, shared, directory.
    pub compute_id: String,
}

impl NodeReport {
    /// Measures this host, as the agent of a node of its own.
    pub async fn of_this_host(compute_dir: &Path) -> ApiResult<NodeReport> {
        let cap = capacity(compute_dir)?;
        let accel = local_accel().await;
        Ok(NodeReport {
            accel: accel.accel.as_str().to_string(),
            accel_reason: accel.reason,
            vcpus: cap.vcpus,
            memory_mib: cap.memory_mib,
            disk_bytes: cap.disk_bytes,
            compute_id: crate::service::read_compute_id(compute_dir)?,
        })
    }

    fn check(&self) -> ApiResult<()> {
        let bad = |detail: String| ApiError::bad_request("invalid_node_report", detail);
        if !matches!(self.accel.as_str(), "kvm" | "tcg") {
            return Err(bad(format!(
                "accel must be kvm or tcg, not {:?}",
                self.accel
            )));
        }
        if self.accel_reason.len() > 1024 {
            return Err(bad("accel_reason is longer than 1024 bytes".into()));
        }
        if !(1..=4096).contains(&self.vcpus) {
            return Err(bad("vcpus must be between 1 and 4096".into()));
        }
        if !(64..=1 << 32).contains(&self.memory_mib) {
            return Err(bad("memory_mib must be between 64 and 2^32".into()));
        }
        if self.disk_bytes < 0 {
            return Err(bad("disk_bytes must not be negative".into()));
        }
        Ok(())
    }
}

/// Records what the agent of `node` reported, as a heartbeat: the node is
/// then live and takes instances. Refused (and nothing recorded) when the
/// node's compute directory is not `compute_id`, the control plane's: its
/// VMs would not find their disks.
pub async fn report(
    store: &Store,
    node: &NodeRow,
    r: &NodeReport,
    compute_id: &str,
) -> ApiResult<Node> {
    r.check()?;
    if r.compute_id != compute_id {
        return Err(ApiError::conflict(
            "compute_dir_not_shared",
            format!(
                "node {:?} reports compute directory {:?}, not the control plane's {compute_id:?}: \
                 mount the control plane's compute directory (shared storage) at the agent's \
                 --compute-dir",
                node.name, r.compute_id
            ),
        ));
    }
    let now = now_ms();
    let row = NodeRow {
        accel: r.accel.clone(),
        accel_reason: r.accel_reason.clone(),
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disk_bytes: r.disk_bytes,
        state: STATE_READY.into(),
        heartbeat_at: now,
        ..node.clone()
    };
    store.node_report(&row).await?;
    let usage = store.node_usage().await?;
    Ok(Node::of(&row, used_by(&usage, &row.id), now))
}

/// Gives enrolled node `name` a new credential (shown this once); the old
/// one stops working at once, and an agent still using it stops.
pub async fn rotate_credential(store: &Store, name: &str) -> ApiResult<(Node, String)> {
    let node = store
        .node_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    let token = nuage_iam::secret::new_token();
    if !store
        .node_set_token(&node.id, &nuage_iam::secret::hash_token(&token))
        .await?
    {
        return Err(ApiError::conflict(
            "node_not_enrolled",
            format!(
                "node {:?} is the embedded node of a server and has no credential",
                node.name
            ),
        ));
    }
    let usage = store.node_usage().await?;
    Ok((Node::of(&node, used_by(&usage, &node.id), now_ms()), token))
}

/// Removes node `name`, and with it the credential of its agent. Refused
/// while instances are placed on it, and for a server's embedded node
/// while that server is alive (it would register again at once).
pub async fn remove(store: &Store, name: &str) -> ApiResult<()> {
    let node = store
        .node_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    let now = now_ms();
    let enrolled = store.node_is_enrolled(&node.id).await?;
    if !enrolled && now - node.heartbeat_at < HEARTBEAT_STALE_MS {
        return Err(ApiError::conflict(
            "node_live",
            format!(
                "node {:?} is the embedded node of a running server; stop that server first",
                node.name
            ),
        ));
    }
    if !store.node_delete_idle(&node.id).await? {
        return Err(ApiError::conflict(
            "node_in_use",
            format!(
                "instances are placed on node {:?}; delete them first",
                node.name
            ),
        ));
    }
    Ok(())
}

/// An enrolled node and its credential, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolledNode {
    pub node: Node,
    /// The credential `nuage agent` authenticates with (shown this once).
    pub token: String,
}

/// Enroll a node for `nuage agent`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollNode {
    /// 1 to 253 printable characters, unique among nodes.
    pub name: String,
}

// ---- what the API shows -------------------------------------------------------

/// A compute node, its capacity and what its instances use.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Node {
    pub id: String,
    pub name: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why the start-up probe chose `accel`.
    pub accel_reason: String,
    /// Logical CPUs of the host.
    pub vcpus: i64,
    /// Memory of the host, MiB.
    pub memory_mib: i64,
    /// Size of the filesystem holding the disks, bytes.
    pub disk_bytes: i64,
    /// vCPUs placement may hand out per host CPU.
    pub cpu_overcommit: f64,
    /// Guest memory placement may hand out per MiB of host memory.
    pub memory_overcommit: f64,
    /// vCPUs and memory of the instances on the node.
    pub used_vcpus: i64,
    pub used_memory_mib: i64,
    /// `ready` (takes new instances) or `enrolled` (enrolled for `nuage
    /// agent`, which has not reported yet).
    pub state: String,
    /// Seconds since the node's last heartbeat.
    pub heartbeat_age_secs: i64,
    /// False when the heartbeat is too old for placement to trust the node.
    pub live: bool,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl Node {
    pub fn of(r: &NodeRow, used: NodeUsage, now: i64) -> Node {
        let age = (now - r.heartbeat_at).max(0);
        Node {
            id: r.id.clone(),
            name: r.name.clone(),
            accel: r.accel.clone(),
            accel_reason: r.accel_reason.clone(),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disk_bytes: r.disk_bytes,
            cpu_overcommit: r.cpu_overcommit,
            memory_overcommit: r.memory_overcommit,
            used_vcpus: used.vcpus,
            used_memory_mib: used.memory_mib,
            state: r.state.clone(),
            heartbeat_age_secs: age / 1000,
            live: age < HEARTBEAT_STALE_MS,
            created_at: r.created_at,
        }
    }
}

/// Change a node's overcommit ratios (those left out stay).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNode {
    /// Above 0, at most 16.
    #[serde(default)]
    pub cpu_overcommit: Option<f64>,
    /// Above 0, at most 4.
    #[serde(default)]
    pub memory_overcommit: Option<f64>,
}

impl UpdateNode {
    pub fn check(&self) -> ApiResult<()> {
        let bad = |what: &str, max: f64| {
            ApiError::bad_request(
                "invalid_overcommit",
                format!("{what} must be a number above 0 and at most {max}"),
            )
        };
        if let Some(c) = self.cpu_overcommit {
            if !(c.is_finite() && c > 0.0 && c <= MAX_CPU_OVERCOMMIT) {
                return Err(bad("cpu_overcommit", MAX_CPU_OVERCOMMIT));
            }
        }
        if let Some(m) = self.memory_overcommit {
            if !(m.is_finite() && m > 0.0 && m <= MAX_MEMORY_OVERCOMMIT) {
                return Err(bad("memory_overcommit", MAX_MEMORY_OVERCOMMIT));
            }
        }
        if self.cpu_overcommit.is_none() && self.memory_overcommit.is_none() {
            return Err(ApiError::bad_request(
                "invalid_overcommit",
                "give cpu_overcommit, memory_overcommit or both",
            ));
        }
        Ok(())
    }
}

/// Every node with what its instances use.
pub async fn list(store: &Store) -> ApiResult<Vec<Node>> {
    let usage = store.node_usage().await?;
    let now = now_ms();
    Ok(store
        .node_list()
        .await?
        .iter()
        .map(|n| Node::of(n, used_by(&usage, &n.id), now))
        .collect())
}

pub(crate) fn used_by(usage: &[(String, NodeUsage)], node_id: &str) -> NodeUsage {
    usage
        .iter()
        .find(|(id, _)| id == node_id)
        .map(|(_, u)| *u)
        .unwrap_or_default()
}

/// Sets node `name`'s overcommit ratios (checked: 400 and nothing changed
/// when out of bounds).
pub async fn set_overcommit(store: &Store, name: &str, body: &UpdateNode) -> ApiResult<Node> {
    body.check()?;
    let node = store
        .node_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    let row = store
        .node_set_overcommit(&node.id, body.cpu_overcommit, body.memory_overcommit)
        .await?;
    let usage = store.node_usage().await?;
    Ok(Node::of(&row, used_by(&usage, &row.id), now_ms()))
}

/// A size tenants create instances with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InstanceType {
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub description: String,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl From<&InstanceTypeRow> for InstanceType {
    fn from(r: &InstanceTypeRow) -> Self {
        InstanceType {
            name: r.name.clone(),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            description: r.description.clone(),
            created_at: r.created_at,
        }
    }
}

/// Create or replace an instance type.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutInstanceType {
    /// 1 to 64.
    pub vcpus: i64,
    /// 64 to 262144 (256 GiB).
    pub memory_mib: i64,
    #[serde(default)]
    pub description: String,
}

/// The longest description of an instance type.
const MAX_DESCRIPTION: usize = 256;

/// Creates or replaces type `name`; true when created. Bad names or sizes
/// are refused (400) before anything is written.
pub async fn put_type(
    store: &Store,
    name: &str,
    body: &PutInstanceType,
) -> ApiResult<(InstanceType, bool)> {
    name::validate("instance type", name)?;
    check_request(body.vcpus, body.memory_mib)?;
    if body.description.chars().count() > MAX_DESCRIPTION
        || body.description.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION} printable characters"
        )));
    }
    let row = InstanceTypeRow {
        name: name.to_string(),
        vcpus: body.vcpus,
        memory_mib: body.memory_mib,
        description: body.description.clone(),
        created_at: now_ms(),
    };
    let created = store.instance_type_put(&row).await?;
    let stored = store
        .instance_type_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("instance type", name))?;
    Ok((InstanceType::from(&stored), created))
}

/// The types a fresh installation offers, so instances can be created
/// before an operator defines any.
pub fn default_types() -> Vec<InstanceTypeRow> {
    let now = now_ms();
    [
        ("small", 1, 512, "1 vCPU, 512 MiB"),
        ("medium", 2, 2048, "2 vCPUs, 2 GiB"),
        ("large", 4, 8192, "4 vCPUs, 8 GiB"),
    ]
    .into_iter()
    .map(|(name, vcpus, memory_mib, description)| InstanceTypeRow {
        name: name.into(),
        vcpus,
        memory_mib,
        description: description.into(),
        created_at: now,
    })
    .collect()
}

/// Seeds [`default_types`] when no type exists yet.
pub async fn seed_types(store: &Store) -> ApiResult<()> {
    let n = store.instance_type_seed(&default_types()).await?;
    if n > 0 {
        tracing::info!(types = n, "default instance types created");
    }
    Ok(())
}

/// The type `name`, or a 404 naming it (for instance creation).
pub async fn instance_type(store: &Store, name: &str) -> ApiResult<InstanceTypeRow> {
    store
        .instance_type_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("instance type", name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_mib() {
        let text = "MemTotal:       16314204 kB\nMemFree:          1000 kB\n";
        assert_eq!(mem_total_mib(text), Some(15931));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn this_host_has_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = capacity(dir.path()).expect("capacity");
        assert!(
            c.vcpus >= 1 && c.memory_mib > 0 && c.disk_bytes > 0,
            "{c:?}"
        );
    }

    #[test]
    fn overcommit_bounds() {
        let u = |c, m| UpdateNode {
            cpu_overcommit: c,
            memory_overcommit: m,
        };
        assert!(u(Some(16.0), Some(4.0)).check().is_ok());
        assert!(u(Some(0.5), None).check().is_ok());
        for bad in [
            u(Some(0.0), None),
            u(Some(-1.0), None),
            u(Some(16.5), None),
            u(None, Some(4.01)),
            u(Some(f64::NAN), None),
            u(None, None),
        ] {
            let e = bad.check().expect_err("refused");
            assert_eq!(e.code, "invalid_overcommit");
        }
    }
}
