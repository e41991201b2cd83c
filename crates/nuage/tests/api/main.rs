//! End-to-end tests of the control plane through its real HTTP API.

mod access_keys;
mod audit;
mod authz;
mod cli;
mod common;
mod compute;
mod flow;
mod idempotency;
mod instances;
mod isolation;
mod kms;
mod limits;
mod nodes;
mod oidc;
mod openapi;
mod process;
mod readme;
mod remote_node;
mod s3;
mod scale_out;
