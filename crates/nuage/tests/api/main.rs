//! End-to-end tests of the control plane through its real HTTP API.

mod audit;
mod authz;
mod common;
mod flow;
mod isolation;
mod openapi;
mod process;
mod scale_out;
