//! Tamper-evident, per-organization audit log primitives.
//!
//! Audit entries are leaves of an RFC 9162 Merkle tree ([`merkle`]); the
//! tree head is published as a C2SP signed checkpoint ([`note`]); exports
//! carry inclusion proofs so they can be checked offline ([`verify`]).
//! Everything here is pure computation; storage lives elsewhere.

pub mod merkle;
pub mod note;
pub mod verify;
