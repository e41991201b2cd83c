//! Compute: the images, volumes and instances of projects.
//!
//! - [`spool`]: an upload held sealed under a memory-only key while QEMU's
//!   tools inspect and import it over NBD, so no disk image ever touches
//!   the disk in clear.

pub mod spool;
