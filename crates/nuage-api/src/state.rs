//! Shared state handed to every handler.

use std::sync::Arc;

use nuage_audit::log::AuditLog;
use nuage_iam::{Authenticator, Authorizer, Realm};
use nuage_kms::Kms;
use nuage_store::Store;

use crate::metrics::Metrics;

/// Shared by every handler; cloned several times per request (each
/// middleware and extractor takes its own), so it is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub store: Store,
    pub authn: Authenticator,
    pub authz: Arc<Authorizer>,
    pub audit: AuditLog,
    pub kms: Kms,
    pub compute: nuage_compute::Compute,
    /// Object storage (images can be made from objects).
    pub objects: nuage_objects::Engine,
    /// The compute node this server registered at start (its embedded
    /// agent's host), if any.
    pub node_id: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Which realm's tokens this listener accepts.
    pub realm: Realm,
    pub max_body_bytes: usize,
    /// Consoles of VMs on nodes of their own, waiting for their agent
    /// (shared by the tenant and admin listeners).
    pub consoles: Arc<crate::relay::Relays>,
}
