//! What a request learns about itself on its way through a front end (the
//! REST pipeline or the S3 endpoint): who it was, what it asked, what was
//! decided. The front end turns it into the request's audit entry before
//! the response leaves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use nuage_core::model::AuditRecord;
use nuage_core::time::now_ms;

use crate::log::PLATFORM_LOG;

#[derive(Debug, Default)]
pub struct AuditInfo {
    /// The organization whose log gets the entry (the platform's if none).
    pub log_id: Option<String>,
    pub principal_id: Option<String>,
    pub principal_name: String,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<&'static str>,
    pub policies: Vec<String>,
    pub details: BTreeMap<String, String>,
}

/// Shared by the layers and handlers of one request.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<AuditInfo>>);

/// The facts of a finished request that the front end knows itself.
pub struct Finished<'a> {
    pub request_id: &'a str,
    pub source: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The action to record when no handler named one.
    pub default_action: String,
}

impl AuditSlot {
    pub fn update(&self, f: impl FnOnce(&mut AuditInfo)) {
        if let Ok(mut g) = self.0.lock() {
            f(&mut g);
        }
    }

    /// The log to write to and the entry of a finished request.
    pub fn finish(&self, done: Finished<'_>) -> (String, AuditRecord) {
        let info = self
            .0
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        let success = (200..400).contains(&done.status);
        let decision = info
            .decision
            .unwrap_or(if success { "none" } else { "error" });
        let record = AuditRecord {
            time: now_ms(),
            request_id: done.request_id.to_string(),
            principal: info.principal_id.unwrap_or_else(|| "anonymous".to_string()),
            principal_name: info.principal_name,
            source: done.source.to_string(),
            method: done.method.to_string(),
            path: done.path.to_string(),
            action: info.action.unwrap_or(done.default_action),
            resource: info.resource.unwrap_or_default(),
            decision: decision.to_string(),
            policies: info.policies,
            status: done.status,
            details: info.details,
        };
        let log_id = info
            .log_id
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| PLATFORM_LOG.to_string());
        (log_id, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_request_becomes_one_entry_in_its_organizations_log() {
        let slot = AuditSlot::default();
        let done = |status| Finished {
            request_id: "req_1",
            source: "127.0.0.1",
            method: "GET",
            path: "/x",
            status,
            default_action: "GET /x".into(),
        };
        let (log, r) = slot.finish(done(404));
        assert_eq!((log.as_str(), r.decision.as_str()), (PLATFORM_LOG, "error"));
        assert_eq!(
            (r.principal.as_str(), r.action.as_str()),
            ("anonymous", "GET /x")
        );
        slot.update(|a| {
            a.log_id = Some("org_1".into());
            a.action = Some("s3.get_object".into());
            a.decision = Some("allow");
            a.details.insert("key_id".into(), "key_1".into());
        });
        let (log, r) = slot.finish(done(200));
        assert_eq!(log, "org_1");
        assert_eq!(
            (r.action.as_str(), r.decision.as_str()),
            ("s3.get_object", "allow")
        );
        assert_eq!(r.details["key_id"], "key_1");
        // taken: the slot is empty again
        let (log, _) = slot.finish(done(200));
        assert_eq!(log, PLATFORM_LOG);
    }
}
