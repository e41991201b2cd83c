//! Vocabulary shared by every nuage crate: identifiers, names, errors, time and
//! the public resource types. It depends on nothing of ours, so the arrows of
//! the workspace (api → services → store → core) can only point here.

pub mod error;
pub mod id;
pub mod model;
pub mod name;
pub mod page;
pub mod time;

pub use error::{ApiError, ApiResult};
