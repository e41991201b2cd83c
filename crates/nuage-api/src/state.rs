//! Shared state handed to every handler.

use std::sync::Arc;

use nuage_audit::log::AuditLog;
use nuage_iam::{Authenticator, Authorizer, Realm};
use nuage_kms::Kms;
use nuage_store::Store;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub authn: Authenticator,
    pub authz: Arc<Authorizer>,
    pub audit: AuditLog,
    pub kms: Kms,
    pub metrics: Arc<Metrics>,
    /// Which realm's tokens this listener accepts.
    pub realm: Realm,
    pub max_body_bytes: usize,
}
