//! Placement: which node a new instance runs on.
//!
//! Among the nodes that are `ready` (a node of its own proved it mounts
//! the control plane's compute directory), that an operator made
//! schedulable, that carry a label the tenant's organization accepts (when
//! it requires one) and that sent a heartbeat recently, the one with the
//! most free memory that still has room, where room is the host's
//! capacity (never more than the operator approved when scheduling it:
//! a node's own report is not trusted beyond that) times the operator's
//! overcommit ratio minus what the instances already placed there use. Memory decides because it is the resource that
//! cannot be shared; spreading by it keeps nodes evenly loaded. When
//! nothing fits, the error says how much would fit, so the tenant can
//! resize instead of guessing.

use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_store::{NodeRow, NodeUsage, Store};

use crate::nodes::{used_by, HEARTBEAT_STALE_MS};

pub const MIN_VCPUS: i64 = 1;
pub const MAX_VCPUS: i64 = 64;
pub const MIN_MEMORY_MIB: i64 = 64;
pub const MAX_MEMORY_MIB: i64 = 256 * 1024;

/// Refuses impossible sizes (400 `invalid_instance_size`): 1 to 64 vCPUs,
/// 64 MiB to 256 GiB of memory (whole MiB by construction).
pub fn check_request(vcpus: i64, memory_mib: i64) -> ApiResult<()> {
    if !(MIN_VCPUS..=MAX_VCPUS).contains(&vcpus) {
        return Err(ApiError::bad_request(
            "invalid_instance_size",
            format!("an instance has {MIN_VCPUS} to {MAX_VCPUS} vCPUs, not {vcpus}"),
        ));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(ApiError::bad_request(
            "invalid_instance_size",
            format!(
                "an instance has {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB of memory, \
                 not {memory_mib}"
            ),
        ));
    }
    Ok(())
}

/// Parses a memory size into MiB: `512M`, `2G`, `1536` (MiB, as QEMU's
/// `-m`), `1048576K`. Units are powers of 1024; a size that is not a whole
/// number of MiB, or is out of bounds, is a 400 `invalid_instance_size`.
pub fn parse_memory(s: &str) -> ApiResult<i64> {
    let bad = || {
        ApiError::bad_request(
            "invalid_instance_size",
            format!(
                "memory {s:?} is not a whole number of MiB: write it as 512M, 2G or 1536 (MiB)"
            ),
        )
    };
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let kib: i64 = match unit
        .trim_end_matches(['i', 'B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "K" => n,
        "" | "M" => n.checked_mul(1 << 10).ok_or_else(bad)?,
        "G" => n.checked_mul(1 << 20).ok_or_else(bad)?,
        "T" => n.checked_mul(1 << 30).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if kib % 1024 != 0 {
        return Err(bad());
    }
    let mib = kib / 1024;
    check_request(MIN_VCPUS, mib)?;
    Ok(mib)
}

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: NodeRow,
    pub used: NodeUsage,
}

/// The capacity placement counts for `node`: what it reports, bounded by
/// what the operator approved (a bound of 0 is none).
pub fn counted(node: &NodeRow) -> (i64, i64) {
    let bound = |reported: i64, max: i64| if max > 0 { reported.min(max) } else { reported };
    (
        bound(node.vcpus, node.max_vcpus),
        bound(node.memory_mib, node.max_memory_mib),
    )
}

/// What placement may hand out on `node` in all: (vCPUs, MiB), its
/// counted capacity times the operator's overcommit ratios.
pub fn limits(node: &NodeRow) -> (i64, i64) {
    let (vcpus, memory_mib) = counted(node);
    (
        (vcpus as f64 * node.cpu_overcommit).floor() as i64,
        (memory_mib as f64 * node.memory_overcommit).floor() as i64,
    )
}

impl Candidate {
    /// vCPUs placement may hand out on the node, in all.
    pub fn vcpu_limit(&self) -> i64 {
        limits(&self.node).0
    }

    /// MiB placement may hand out on the node, in all.
    pub fn memory_limit(&self) -> i64 {
        limits(&self.node).1
    }

    pub fn free_vcpus(&self) -> i64 {
        (self.vcpu_limit() - self.used.vcpus).max(0)
    }

    pub fn free_memory(&self) -> i64 {
        (self.memory_limit() - self.used.memory_mib).max(0)
    }

    fn live(&self, now: i64) -> bool {
        self.node.state == "ready"
            && self.node.schedulable
            && now - self.node.heartbeat_at < HEARTBEAT_STALE_MS
    }

    /// Whether the node carries one of `accepted` (`None`: no requirement).
    fn accepted_by(&self, accepted: Option<&[String]>) -> bool {
        accepted.is_none_or(|a| self.node.labels.iter().any(|l| a.contains(l)))
    }

    fn fits(&self, vcpus: i64, memory_mib: i64) -> bool {
        self.used.vcpus + vcpus <= self.vcpu_limit()
            && self.used.memory_mib + memory_mib <= self.memory_limit()
    }
}

/// Picks among `candidates` at time `now` (see the module docs), or says
/// why nothing fits (409 `insufficient_capacity`).
pub fn choose(
    candidates: &[Candidate],
    now: i64,
    vcpus: i64,
    memory_mib: i64,
) -> ApiResult<&Candidate> {
    choose_for(candidates, None, now, vcpus, memory_mib)
}

/// [`choose`] for an organization that accepts only nodes carrying one of
/// `accepted` (`None`: any node).
pub fn choose_for<'a>(
    candidates: &'a [Candidate],
    accepted: Option<&[String]>,
    now: i64,
    vcpus: i64,
    memory_mib: i64,
) -> ApiResult<&'a Candidate> {
    let live: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.live(now) && c.accepted_by(accepted))
        .collect();
    if let Some(best) = live
        .iter()
        .filter(|c| c.fits(vcpus, memory_mib))
        .max_by(|a, b| {
            a.free_memory()
                .cmp(&b.free_memory())
                .then(a.free_vcpus().cmp(&b.free_vcpus()))
                // equal: the first by name wins
                .then(b.node.name.cmp(&a.node.name))
        })
    {
        return Ok(best);
    }
    let wanted = format!("{vcpus} vCPUs and {memory_mib} MiB");
    if live.is_empty() {
        let labels = match accepted {
            Some(a) => format!(
                " and carries a node label the organization accepts ({})",
                a.join(", ")
            ),
            None => String::new(),
        };
        return Err(insufficient(format!(
            "no compute node can take {wanted}: none is ready and schedulable with a heartbeat \
             in the last {} s{labels}",
            HEARTBEAT_STALE_MS / 1000
        )));
    }
    // The largest request that fits now: the most memory free on one node,
    // with the vCPUs free there, and the most vCPUs free on any node.
    let roomiest = live
        .iter()
        .max_by_key(|c| (c.free_memory(), c.free_vcpus()))
        .map(|c| (c.free_vcpus(), c.free_memory()))
        .unwrap_or_default();
    let most_vcpus = live.iter().map(|c| c.free_vcpus()).max().unwrap_or(0);
    let biggest = live
        .iter()
        .max_by_key(|c| (c.node.memory_mib, c.node.vcpus))
        .map(|c| &c.node);
    let biggest = biggest
        .map(|n| {
            let (v, m) = counted(n);
            let (lv, lm) = limits(n);
            format!(
                "the largest node has {v} vCPUs and {m} MiB ({lv} vCPUs and {lm} MiB with \
                 overcommit)"
            )
        })
        .unwrap_or_default();
    Err(insufficient(format!(
        "no compute node has room for {wanted}: the largest request that fits now is \
         {} vCPUs and {} MiB (at most {most_vcpus} vCPUs on any node); {biggest}",
        roomiest.0, roomiest.1
    )))
}

fn insufficient(detail: String) -> ApiError {
    ApiError::conflict("insufficient_capacity", detail)
}

/// What placement sees now: every node with what its instances use.
pub async fn candidates(store: &Store) -> ApiResult<Vec<Candidate>> {
    let usage = store.node_usage().await?;
    Ok(store
        .node_list()
        .await?
        .into_iter()
        .map(|node| Candidate {
            used: used_by(&usage, &node.id),
            node,
        })
        .collect())
}

/// The node a new instance of `vcpus` and `memory_mib` runs on: 400
/// `invalid_instance_size` for impossible sizes, 409
/// `insufficient_capacity` when no node has room.
///
/// This reads the current usage: two creations at the same moment may
/// both see the same room, so the caller records the instance (with its
/// `node_id`) promptly and may re-check in its own transaction.
pub async fn place(store: &Store, vcpus: i64, memory_mib: i64) -> ApiResult<NodeRow> {
    check_request(vcpus, memory_mib)?;
    let all = candidates(store).await?;
    choose(&all, now_ms(), vcpus, memory_mib).map(|c| c.node.clone())
}

/// [`place`] for an instance of organization `org_id`: only on nodes
/// carrying a label it accepts, when it requires one.
pub async fn place_for(
    store: &Store,
    org_id: &str,
    vcpus: i64,
    memory_mib: i64,
) -> ApiResult<NodeRow> {
    check_request(vcpus, memory_mib)?;
    let accepted = store.org_node_labels(org_id).await?;
    let all = candidates(store).await?;
    choose_for(&all, accepted.as_deref(), now_ms(), vcpus, memory_mib).map(|c| c.node.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, vcpus: i64, mem: i64, used: (i64, i64)) -> Candidate {
        Candidate {
            node: NodeRow {
                id: format!("node_{name}"),
                name: name.into(),
                accel: "tcg".into(),
                accel_reason: "test".into(),
                vcpus,
                memory_mib: mem,
                disk_bytes: 1 << 40,
                cpu_overcommit: 4.0,
                memory_overcommit: 1.0,
                state: "ready".into(),
                heartbeat_at: 1_000_000,
                created_at: 0,
                schedulable: true,
                schedule_requested_by: String::new(),
                max_vcpus: 0,
                max_memory_mib: 0,
                labels: Vec::new(),
            },
            used: NodeUsage {
                vcpus: used.0,
                memory_mib: used.1,
            },
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(check_request(1, 64).is_ok());
        assert!(check_request(64, 262_144).is_ok());
        for (v, m) in [
            (0, 512),
            (65, 512),
            (-1, 512),
            (1, 63),
            (1, 262_145),
            (1, 0),
        ] {
            let e = check_request(v, m).expect_err("refused");
            assert_eq!(e.code, "invalid_instance_size", "{v} {m}");
            assert_eq!(e.status.as_u16(), 400);
        }
    }

    #[test]
    fn memory_sizes_parse_to_whole_mib() {
        assert_eq!(parse_memory("1G").ok(), Some(1024));
        assert_eq!(parse_memory("512M").ok(), Some(512));
        assert_eq!(parse_memory("512MiB").ok(), Some(512));
        assert_eq!(parse_memory("1536").ok(), Some(1536));
        assert_eq!(parse_memory("131072K").ok(), Some(128));
        for bad in [
            "", "1.5G", "1536K1", "100K", "1025K", "32M", "1T", "G", "-1G",
        ] {
            let e = parse_memory(bad).expect_err(bad);
            assert_eq!(e.code, "invalid_instance_size", "{bad}");
        }
    }

    #[test]
    fn most_free_memory_wins_and_the_message_says_what_fits() {
        let now = 1_000_500;
        let nodes = [node("a", 2, 4096, (0, 3072)), node("b", 2, 4096, (7, 1024))];
        let c = choose(&nodes, now, 1, 512).expect("fits");
        assert_eq!(c.node.name, "b");
        // b has 1 vCPU left (2 × 4 − 7): two go to a
        let c = choose(&nodes, now, 2, 512).expect("fits");
        assert_eq!(c.node.name, "a");
        let e = choose(&nodes, now, 2, 2048).expect_err("no room");
        assert_eq!(e.code, "insufficient_capacity");
        assert_eq!(e.status.as_u16(), 409);
        assert!(
            e.detail.contains("fits now is 1 vCPUs and 3072 MiB")
                && e.detail.contains("at most 8 vCPUs on any node")
                && e.detail.contains("largest node has 2 vCPUs and 4096 MiB"),
            "{}",
            e.detail
        );
    }
}
