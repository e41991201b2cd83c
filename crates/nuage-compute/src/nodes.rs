//! Compute nodes and instance types.
//!
//! A node registers itself at start with what it measured (accelerator,
//! vCPUs, memory, disk) and then proves it is alive with heartbeats;
//! placement only trusts nodes whose heartbeat is recent. Operators tune a
//! node's overcommit ratios and define the instance types tenants choose
//! from (`--type small`), so sizes are a platform decision, not a guess of
//! each tenant.
//!
//! A node of its own receives its tenants' disk keys and user-data, so an
//! operator credential alone must not make one: the enrollment's
//! credential is not enough. Its agent proves it mounts the control
//! plane's compute directory by reading back a fresh nonce the control
//! plane wrote there ([`challenge`]); until then the node stays
//! `enrolled` and is never placed on. And it takes no tenant workload
//! until an operator makes it schedulable ([`schedule`]), approving the
//! capacity it reported then: later reports count no further (under the
//! two-person rule a second operator confirms). Organizations may also
//! require nodes carrying a label they accept.

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

/// Tenant actions on the instance type catalogue and on the node labels
/// an organization accepts (registered at start).
pub const ACTIONS: &[ActionDef] = &[
    ActionDef {
        name: "compute.list_instance_types",
        level: Level::Read,
        also: &[],
    },
    ActionDef {
        name: "compute.get_node_labels",
        level: Level::Read,
        also: &[],
    },
    // Where the organization's workloads (and so its keys) may go: an
    // administrator's decision.
    ActionDef {
        name: "compute.set_node_labels",
        level: Level::Admin,
        also: &[],
    },
];

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
        // The server's own host: its operator started it; an earlier
        // `unschedule` survives a restart (the upsert keeps it).
        schedulable: true,
        schedule_requested_by: String::new(),
        max_vcpus: 0,
        max_memory_mib: 0,
        labels: Vec::new(),
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
        schedulable: false,
        schedule_requested_by: String::new(),
        max_vcpus: 0,
        max_memory_mib: 0,
        labels: Vec::new(),
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
    /// The nonce of the node's latest challenge, as the agent read it in
    /// its compute directory: proves that directory is the control plane's.
    /// Needed while the node is `enrolled`; a heartbeat may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
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
            challenge: None,
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
        if self.challenge.as_ref().is_some_and(|c| c.len() > 256) {
            return Err(bad("challenge is longer than 256 bytes".into()));
        }
        Ok(())
    }
}

/// How long a challenge may be answered after it was written.
pub const CHALLENGE_TTL_MS: i64 = 5 * 60_000;

/// Where the challenge of node `node_id` is written, relative to the
/// compute directory.
pub fn challenge_file(node_id: &str) -> String {
    format!("nodes/{node_id}/challenge")
}

/// Whether `id` can be a node id (the agent builds a path from it).
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where an agent finds the nonce of its node's challenge.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeChallenge {
    /// The calling node's id.
    pub node_id: String,
    /// The nonce's file, relative to the compute directory
    /// (`nodes/<node_id>/challenge`).
    pub file: String,
    /// Seconds left to answer it (with the node's next report).
    pub expires_in_secs: i64,
}

/// Writes a fresh nonce for enrolled `node` in the control plane's compute
/// directory `compute_dir` (replacing any earlier challenge; only its
/// SHA-256 is stored). Its agent reads it back through the directory it
/// mounted and answers with its report: whoever holds only the node's
/// credential cannot.
pub async fn challenge(
    store: &Store,
    compute_dir: &Path,
    node: &NodeRow,
) -> ApiResult<NodeChallenge> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let nonce = zeroize::Zeroizing::new(nuage_iam::secret::new_token());
    let rel = challenge_file(&node.id);
    let file = compute_dir.join(&rel);
    let dir = file
        .parent()
        .ok_or_else(|| ApiError::internal("challenge file has no directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(crate::service::io_err("challenge directory"))?;
    // A name of its own per request, so that two at once never trip on each
    // other (the file and the stored hash may then come from different
    // ones: the answer fails and the agent asks again).
    let tmp = dir.join(format!("challenge.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(crate::service::io_err("challenge file"))?;
    if let Err(e) = f
        .write_all(nonce.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(crate::service::io_err("challenge file")(e));
    }
    if let Err(e) = std::fs::rename(&tmp, &file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(crate::service::io_err("challenge file")(e));
    }
    if !store
        .node_set_challenge(&node.id, &nuage_iam::secret::hash_token(&nonce), now_ms())
        .await?
    {
        let _ = std::fs::remove_file(&file);
        return Err(ApiError::not_found("compute node", &node.name));
    }
    Ok(NodeChallenge {
        node_id: node.id.clone(),
        file: rel,
        expires_in_secs: CHALLENGE_TTL_MS / 1000,
    })
}

/// Removes what the control plane wrote for node `node_id` in its compute
/// directory (best effort: a leftover nonce proves nothing once used).
pub fn forget_challenge(compute_dir: &Path, node_id: &str) {
    if is_node_id(node_id) {
        let _ = std::fs::remove_dir_all(compute_dir.join("nodes").join(node_id));
    }
}

fn mount_not_proven(node: &NodeRow) -> ApiError {
    ApiError::conflict(
        "compute_dir_not_shared",
        format!(
            "node {:?} has not proven that it mounts the control plane's compute directory: its \
             agent reads the challenge the control plane writes there (POST \
             /agent/v1/node/challenge) and answers with its report; mount the control plane's \
             compute directory (shared storage) at the agent's --compute-dir",
            node.name
        ),
    )
}

/// Records what the agent of `node` reported, as a heartbeat: the node is
/// then live (and placed on once an operator made it schedulable).
/// Refused (409, nothing recorded, nothing revealed) while the node has
/// not answered a challenge of the control plane's compute directory
/// `compute_dir` with the right nonce: its VMs would not find their disks,
/// or its caller holds a credential and nothing else.
pub async fn report(
    store: &Store,
    node: &NodeRow,
    r: &NodeReport,
    compute_dir: &Path,
) -> ApiResult<Node> {
    r.check()?;
    let now = now_ms();
    match &r.challenge {
        Some(answer) => {
            let hash = nuage_iam::secret::hash_token(answer.trim());
            if !store
                .node_take_challenge(&node.id, &hash, now - CHALLENGE_TTL_MS)
                .await?
            {
                return Err(mount_not_proven(node));
            }
            let _ = std::fs::remove_file(compute_dir.join(challenge_file(&node.id)));
        }
        None if node.state == STATE_ENROLLED => return Err(mount_not_proven(node)),
        None => {}
    }
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

/// Removes node `name`, and with it the credential of its agent (and its
/// challenge in the compute directory `compute_dir`). Refused while
/// instances are placed on it, and for a server's embedded node while that
/// server is alive (it would register again at once).
pub async fn remove(store: &Store, compute_dir: &Path, name: &str) -> ApiResult<()> {
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
    forget_challenge(compute_dir, &node.id);
    Ok(())
}

/// Make a node schedulable, approving the capacity placement may count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleNode {
    /// The most host vCPUs placement counts for the node (1 to 4096);
    /// by default what the node reports now.
    #[serde(default)]
    pub max_vcpus: Option<i64>,
    /// The most host memory placement counts for the node, MiB (64 to
    /// 2^32); by default what the node reports now.
    #[serde(default)]
    pub max_memory_mib: Option<i64>,
}

/// How a schedule request ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Scheduled {
    pub node: Node,
    /// False when the two-person rule holds the request until a second
    /// operator confirms it.
    pub done: bool,
}

/// Makes node `name` schedulable for operator `by`: placement may put
/// tenant instances on it from now on, counting at most the capacity
/// approved here (what the node reports now, or less). Refused while the
/// node has not proven its mount (`enrolled`: its report is all there is
/// to approve). With `two_person`, the first operator's request waits (and
/// is shown on the node) until a different operator confirms it with the
/// same bounds.
pub async fn schedule(
    store: &Store,
    name: &str,
    by: &str,
    two_person: bool,
    body: &ScheduleNode,
) -> ApiResult<Scheduled> {
    let node = store
        .node_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    if node.state == STATE_ENROLLED {
        return Err(ApiError::conflict(
            "node_not_proven",
            format!(
                "node {:?} has not reported from the control plane's compute directory yet: \
                 start its agent, then schedule it once it is ready",
                node.name
            ),
        ));
    }
    let bad = |d: String| ApiError::bad_request("invalid_schedule", d);
    let max_vcpus = body.max_vcpus.unwrap_or(node.vcpus);
    let max_memory_mib = body.max_memory_mib.unwrap_or(node.memory_mib);
    if !(1..=4096).contains(&max_vcpus) {
        return Err(bad("max_vcpus must be between 1 and 4096".into()));
    }
    if !(64..=1 << 32).contains(&max_memory_mib) {
        return Err(bad("max_memory_mib must be between 64 and 2^32".into()));
    }
    let confirms =
        two_person && !node.schedule_requested_by.is_empty() && node.schedule_requested_by != by;
    if two_person && !confirms {
        if node.schedule_requested_by == by {
            return Err(ApiError::conflict(
                "second_operator_required",
                format!(
                    "the two-person rule is on: another operator confirms the schedule of \
                     node {:?}",
                    node.name
                ),
            ));
        }
        let row = store
            .node_set_schedule(&node.id, node.schedulable, by, max_vcpus, max_memory_mib)
            .await?
            .ok_or_else(|| ApiError::not_found("compute node", name))?;
        return Ok(Scheduled {
            node: node_now(store, &row).await?,
            done: false,
        });
    }
    if confirms && (max_vcpus, max_memory_mib) != (node.max_vcpus, node.max_memory_mib) {
        return Err(ApiError::conflict(
            "schedule_mismatch",
            format!(
                "the pending request for node {:?} approves {} vCPUs and {} MiB: confirm those \
                 (or unschedule and ask again)",
                node.name, node.max_vcpus, node.max_memory_mib
            ),
        ));
    }
    let row = store
        .node_set_schedule(&node.id, true, "", max_vcpus, max_memory_mib)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    Ok(Scheduled {
        node: node_now(store, &row).await?,
        done: true,
    })
}

/// Cordons node `name`: placement puts nothing more on it (what runs
/// there stays) and a pending schedule request is dropped.
pub async fn unschedule(store: &Store, name: &str) -> ApiResult<Node> {
    let node = store
        .node_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    let row = store
        .node_set_schedule(&node.id, false, "", node.max_vcpus, node.max_memory_mib)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    node_now(store, &row).await
}

/// The longest label, and the most labels a node or an organization has.
pub const MAX_LABEL_LEN: usize = 63;
pub const MAX_LABELS: usize = 16;

/// Labels are short names: lower-case letters, digits, `-`, `.`, `_`,
/// `=` and `/` (so `zone=fr-par-1` or `cert/secnumcloud` work), unique,
/// at most [`MAX_LABELS`]; returned sorted.
pub fn check_labels(labels: &[String]) -> ApiResult<Vec<String>> {
    let bad = |d: String| ApiError::bad_request("invalid_label", d);
    if labels.len() > MAX_LABELS {
        return Err(bad(format!("at most {MAX_LABELS} labels")));
    }
    for l in labels {
        let ok = !l.is_empty()
            && l.len() <= MAX_LABEL_LEN
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._=/".contains(&b));
        if !ok {
            return Err(bad(format!(
                "label {l:?}: 1 to {MAX_LABEL_LEN} of a-z 0-9 - . _ = /"
            )));
        }
    }
    let mut v = labels.to_vec();
    v.sort();
    v.dedup();
    Ok(v)
}

/// Set a node's labels (replacing them).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLabels {
    pub labels: Vec<String>,
}

/// Replaces node `name`'s labels.
pub async fn set_labels(store: &Store, name: &str, labels: &[String]) -> ApiResult<Node> {
    let labels = check_labels(labels)?;
    let node = store
        .node_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    let row = store
        .node_set_labels(&node.id, &labels)
        .await?
        .ok_or_else(|| ApiError::not_found("compute node", name))?;
    node_now(store, &row).await
}

/// The node labels an organization accepts: its instances run only on
/// nodes carrying one of them (none: any node).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcceptedNodeLabels {
    pub accepted: Vec<String>,
}

/// The node labels organization `org_id` accepts.
pub async fn accepted_labels(store: &Store, org_id: &str) -> ApiResult<AcceptedNodeLabels> {
    Ok(AcceptedNodeLabels {
        accepted: store.org_node_labels(org_id).await?.unwrap_or_default(),
    })
}

/// Sets the node labels organization `org_id` accepts (an empty list lifts
/// the requirement). Instances already placed stay where they are.
pub async fn set_accepted_labels(
    store: &Store,
    org_id: &str,
    labels: &[String],
) -> ApiResult<AcceptedNodeLabels> {
    let labels = check_labels(labels)?;
    let set = (!labels.is_empty()).then_some(labels.as_slice());
    store.org_node_labels_set(org_id, set, now_ms()).await?;
    Ok(AcceptedNodeLabels { accepted: labels })
}

async fn node_now(store: &Store, row: &NodeRow) -> ApiResult<Node> {
    let usage = store.node_usage().await?;
    Ok(Node::of(row, used_by(&usage, &row.id), now_ms()))
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
    /// `ready` (its agent reported, from the control plane's compute
    /// directory) or `enrolled` (enrolled for `nuage agent`, which has not
    /// proven its mount yet).
    pub state: String,
    /// Whether placement puts new instances on the node (an operator's
    /// decision: `nuage admin node schedule`).
    pub schedulable: bool,
    /// Under the two-person rule, the operator whose request to schedule
    /// the node waits for a second one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schedule_requested_by: String,
    /// The capacity the operator approved (0: no bound): placement counts
    /// the smaller of this and what the node reports.
    pub max_vcpus: i64,
    pub max_memory_mib: i64,
    /// Labels an operator put on the node.
    pub labels: Vec<String>,
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
            schedulable: r.schedulable,
            schedule_requested_by: r.schedule_requested_by.clone(),
            max_vcpus: r.max_vcpus,
            max_memory_mib: r.max_memory_mib,
            labels: r.labels.clone(),
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

impl crate::Compute {
    /// The control plane's compute directory (nodes of their own mount it).
    pub fn dir(&self) -> &Path {
        &self.0.cfg.dir
    }

    /// Whether scheduling a node needs a second operator's confirmation.
    pub fn two_person_schedule(&self) -> bool {
        self.0.cfg.two_person_schedule
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
