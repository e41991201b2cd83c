//! The HTTP face of nuage: the tenant API (`/v1`), the operator API
//! (`/admin/v1`, on its own listener) and the pipeline every request goes
//! through — request id, authentication, organization scoping,
//! authorization, audit, metrics — so a service adds routes, never a path
//! around that pipeline.

pub mod ctx;
pub mod idempotency;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod relay;
pub mod routes;
pub mod server;
pub mod state;

pub use listener::ConnectionLimits;
pub use server::{start, RunningServer, ServerConfig};
