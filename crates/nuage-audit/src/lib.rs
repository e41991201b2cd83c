//! Tamper-evident, per-organization audit log primitives.
//!
//! Audit entries are leaves of an RFC 9162 Merkle tree ([`merkle`]); the
//! tree head is published as a C2SP signed checkpoint ([`note`]); exports
//! carry inclusion proofs so they can be checked offline ([`verify`]).
//! [`log`] keeps the trees in the metadata store, records entries with group
//! commit and signs checkpoints in the background; [`pending`] gathers what
//! a request's entry will say while the request is served.

pub mod log;
pub mod merkle;
pub mod note;
pub mod pending;
pub mod verify;
