//! The S3 endpoint. `s3s` parses the wire format and verifies SigV4
//! (headers, presigned URLs, aws-chunked bodies); everything that decides —
//! who the caller is, whether it may act, what is recorded — is ours:
//!
//! - [`front`]: the listener's entry point (request id, sealed mode, the
//!   audit entry written before the response leaves);
//! - [`auth`]: access keys to principals, anonymous requests refused;
//! - [`ops`]: the S3 operations, each authorized by the platform's
//!   authorizer against the bucket's project; [`tagging`], [`copy`] and
//!   [`bucket_settings`] hold more of them, [`conditions`] what requests say about bodies.

mod auth;
mod bucket_settings;
mod conditions;
mod copy;
mod front;
mod ops;
mod tagging;

pub use front::{S3Config, S3Front};
