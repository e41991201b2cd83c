//! The host-side driver of QEMU for nuage's compute node agent: starts VMs
//! that outlive the agent, talks QMP to them, and prepares their encrypted
//! qcow2 disks and cloud-init seeds with `qemu-img` and `genisoimage`.
//!
//! Keys never appear on a command line, in a log or in a file in clear:
//! QEMU receives them as QMP `secret` objects, `qemu-img` through an
//! inherited memfd named `/dev/fd/N` (see [`key`] and [`tool`]).
//!
//! No database and no HTTP here: the compute service decides *what* runs,
//! this crate makes QEMU do it.

pub mod accel;
pub mod chain;
pub mod disk;
pub mod error;
pub mod image;
pub mod key;
pub mod machine;
pub mod qmp;
pub mod seed;
pub mod tool;

pub use accel::{Accel, AccelProbe};
pub use chain::{Chain, Layer};
pub use error::{Error, ImageError, Result};
pub use key::DiskKey;
pub use machine::{DiskSpec, NicSpec, Vm, VmSpec, VmState, VmStatus};
pub use qmp::{Event, Qmp};
