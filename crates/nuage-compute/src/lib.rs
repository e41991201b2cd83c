//! Compute: the images, volumes and instances of projects.
//!
//! - [`instances`]: what a tenant's request on a VM records.
//! - [`agent`]: the node agent that makes VMs match those records, on the
//!   node a server embeds and on nodes of their own.
//! - [`link`]: what an agent asks of the control plane and reports to it,
//!   scoped to its node.
//! - [`model`]: the resources as the REST API shows them.
//! - [`service`]: create, import, change and delete them (disks through
//!   `nuage-qemu`, keys through the key service).
//! - [`nodes`]: the machines that run instances (registered with what
//!   they measured, kept alive by heartbeats) and the instance types.
//! - [`placement`]: which node a new instance runs on.
//! - [`snapshots`]: volume snapshots with no copy (the volume gets a new top
//!   file), and growing volumes.
//! - [`spares`]: empty encrypted disks made ahead of need, so a new disk
//!   does not wait for QEMU's LUKS key-derivation benchmark.
//! - [`tasks`]: what a request needs the agent of a node of its own to do
//!   to a running VM (reset, live snapshot, live resize), and its outcome.
//! - [`spool`]: an upload held sealed under a memory-only key while QEMU's
//!   tools inspect and import it over NBD, so no disk image ever touches
//!   the disk in clear.

pub mod agent;
pub mod instances;
pub mod link;
pub mod model;
pub mod nodes;
pub mod placement;
pub mod service;
pub mod snapshots;
pub(crate) mod spares;
pub mod spool;
pub mod tasks;

pub use service::{Compute, ComputeConfig};

use nuage_iam::{ActionDef, Level};

const fn act(name: &'static str, level: Level) -> ActionDef {
    ActionDef {
        name,
        level,
        also: &[],
    }
}

/// Compute actions (registered by the server at start).
pub const ACTIONS: &[ActionDef] = &[
    act("compute.list_images", Level::Read),
    act("compute.get_image", Level::Read),
    act("compute.create_image", Level::Write),
    act("compute.upload_image", Level::Write),
    act("compute.update_image", Level::Write),
    act("compute.delete_image", Level::Write),
    act("compute.list_volumes", Level::Read),
    act("compute.get_volume", Level::Read),
    act("compute.create_volume", Level::Write),
    act("compute.delete_volume", Level::Write),
    act("compute.update_volume", Level::Write),
    act("compute.attach_volume", Level::Write),
    act("compute.list_snapshots", Level::Read),
    act("compute.get_snapshot", Level::Read),
    act("compute.create_snapshot", Level::Write),
    act("compute.delete_snapshot", Level::Write),
    act("compute.detach_volume", Level::Write),
    act("compute.list_instances", Level::Read),
    act("compute.get_instance", Level::Read),
    act("compute.create_instance", Level::Write),
    act("compute.start_instance", Level::Write),
    act("compute.stop_instance", Level::Write),
    act("compute.reboot_instance", Level::Write),
    act("compute.delete_instance", Level::Write),
    // The console shows what the guest prints (it may hold secrets) and
    // takes keystrokes: an operator's action, audited, not a reader's.
    act("compute.console", Level::Write),
];
