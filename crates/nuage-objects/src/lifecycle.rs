//! Bucket lifecycle rules and the pass that applies them.
//!
//! Rules are stored per bucket as JSON of [`Rule`] (validated by the S3
//! layer, which speaks AWS's XML). A pass ([`Lifecycle::run`]) takes the
//! time as an argument so tests can run it "400 days later"; the server runs
//! it periodically with the clock. Every action goes through the engine
//! (bodies and data keys removed, i.e. crypto-shredded, after the metadata
//! commits) and is written to the bucket's organization audit log, since a
//! rule deleting data is a platform action like any other.
//!
//! Each action re-checks its premise in its transaction (the version is
//! still current, still noncurrent, the marker still alone), so a pass
//! racing with clients never removes what a client just wrote.

use std::collections::BTreeMap;
use std::time::Duration;

use nuage_audit::log::AuditLog;
use nuage_core::model::AuditRecord;
use nuage_core::time::now_ms;
use nuage_core::ApiResult;
use nuage_store::{BucketRow, VersionRow};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;

pub const DAY_MS: i64 = 86_400_000;

/// Most rules a bucket may have (as S3).
pub const MAX_RULES: usize = 1000;

/// One lifecycle rule, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub enabled: bool,
    /// Keys the rule applies to.
    pub prefix: String,
    /// The prefix came as the legacy rule-level `<Prefix>`, not in `<Filter>`
    /// (kept to answer GetBucketLifecycleConfiguration in the same form).
    #[serde(default)]
    pub legacy_prefix: bool,
    /// Current versions expire this many days after creation.
    #[serde(default)]
    pub expiration_days: Option<i32>,
    /// Current versions expire from this date (ms, midnight UTC).
    #[serde(default)]
    pub expiration_date: Option<i64>,
    /// Delete markers with no other version of their key are removed.
    #[serde(default)]
    pub expired_object_delete_marker: Option<bool>,
    /// Noncurrent versions are removed this many days after they became
    /// noncurrent…
    #[serde(default)]
    pub noncurrent_days: Option<i32>,
    /// …except the newest this many noncurrent versions.
    #[serde(default)]
    pub newer_noncurrent_versions: Option<i32>,
    /// Multipart uploads are aborted this many days after they started.
    #[serde(default)]
    pub abort_days: Option<i32>,
}

/// The moment an age of `days` counted from `t` is reached: S3 rounds to
/// the next midnight UTC.
pub fn due(t: i64, days: i32) -> i64 {
    let x = t.saturating_add(i64::from(days).saturating_mul(DAY_MS));
    x.saturating_add(DAY_MS - 1).div_euclid(DAY_MS) * DAY_MS
}

pub fn encode(rules: &[Rule]) -> ApiResult<String> {
    serde_json::to_string(rules)
        .map_err(|e| nuage_core::ApiError::internal(format!("lifecycle rules do not encode: {e}")))
}

pub fn decode(stored: &str) -> ApiResult<Vec<Rule>> {
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(stored)
        .map_err(|e| nuage_core::ApiError::internal(format!("stored lifecycle rules: {e}")))
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Current versions expired (deleted, or hidden behind a delete marker).
    pub expired: u64,
    /// Noncurrent versions removed.
    pub noncurrent_removed: u64,
    /// Expired delete markers removed.
    pub markers_removed: u64,
    pub uploads_aborted: u64,
}

/// Applies lifecycle rules; cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    engine: Engine,
    audit: AuditLog,
}

impl Lifecycle {
    pub fn new(engine: Engine, audit: AuditLog) -> Lifecycle {
        Lifecycle { engine, audit }
    }

    /// Runs a pass every `every` until the task is aborted (not while the
    /// key service is sealed: removals need it to delete data keys).
    pub async fn run_every(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if self.engine.kms().is_sealed() {
                continue;
            }
            match self.run(now_ms()).await {
                Ok(r) if r != Report::default() => {
                    tracing::info!(report = ?r, "object lifecycle pass")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.detail, "object lifecycle pass failed"),
            }
        }
    }

    /// One pass over every bucket with rules, as if the time were `now`.
    pub async fn run(&self, now: i64) -> ApiResult<Report> {
        let mut report = Report::default();
        let mut after = String::new();
        loop {
            let page = self
                .engine
                .store()
                .buckets_with_lifecycle(&after, 100)
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(report);
            };
            after = last.id.clone();
            for (bucket, stored) in &page {
                let rules = match decode(stored) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(bucket = %bucket.name, error = %e.detail, "lifecycle rules skipped");
                        continue;
                    }
                };
                for rule in rules.iter().filter(|r| r.enabled) {
                    if let Err(e) = self.apply(bucket, rule, now, &mut report).await {
                        tracing::warn!(bucket = %bucket.name, rule = %rule.id, error = %e.detail,
                            "lifecycle rule failed");
                    }
                }
            }
        }
    }

    async fn apply(
        &self,
        bucket: &BucketRow,
        rule: &Rule,
        now: i64,
        report: &mut Report,
    ) -> ApiResult<()> {
        let versions = rule.expiration_days.is_some()
            || rule.expiration_date.is_some()
            || rule.expired_object_delete_marker == Some(true)
            || rule.noncurrent_days.is_some();
        if versions {
            let prefix_hex = nuage_store::key_hex(&rule.prefix);
            let (mut after_hex, mut after_seq) = (String::new(), None);
            let mut group: Vec<VersionRow> = Vec::new();
            loop {
                let rows = self
                    .engine
                    .store()
                    .version_list(&bucket.id, &prefix_hex, &after_hex, after_seq, 1000)
                    .await?;
                let done = rows.len() < 1000;
                for r in rows {
                    after_hex = nuage_store::key_hex(&r.row.key);
                    after_seq = Some(r.seq);
                    if group.first().is_some_and(|g| g.row.key != r.row.key) {
                        let g = std::mem::take(&mut group);
                        self.apply_key(bucket, rule, now, &g, report).await?;
                    }
                    group.push(r);
                }
                if done {
                    break;
                }
            }
            if !group.is_empty() {
                self.apply_key(bucket, rule, now, &group, report).await?;
            }
        }
        if let Some(days) = rule.abort_days {
            self.abort_uploads(bucket, rule, days, now, report).await?;
        }
        Ok(())
    }

    /// Applies `rule` to the versions of one key (newest first).
    async fn apply_key(
        &self,
        bucket: &BucketRow,
        rule: &Rule,
        now: i64,
        versions: &[VersionRow],
        report: &mut Report,
    ) -> ApiResult<()> {
        let Some(latest) = versions.first().filter(|v| v.latest) else {
            return Ok(());
        };
        let key = &latest.row.key;
        if !latest.marker {
            let expired = rule
                .expiration_days
                .is_some_and(|d| now >= due(latest.row.created_at, d))
                || rule.expiration_date.is_some_and(|d| now >= d);
            if expired {
                let d = self
                    .engine
                    .delete_latest_if(bucket, key, Some(&latest.row.version_id), now)
                    .await?;
                if d.removed.is_some() || d.marker.is_some() {
                    report.expired += 1;
                    let mut details = BTreeMap::from([
                        ("rule".to_string(), rule.id.clone()),
                        ("version_id".to_string(), latest.label().to_string()),
                    ]);
                    if let Some(m) = &d.marker {
                        details.insert("delete_marker_version_id".into(), m.clone());
                    }
                    self.record(bucket, "s3.lifecycle.expire_object", key, rule, details)
                        .await;
                }
                // The key changed: its noncurrent versions wait for the next pass.
                return Ok(());
            }
        }
        if let Some(days) = rule.noncurrent_days {
            let keep = usize::try_from(rule.newer_noncurrent_versions.unwrap_or(0)).unwrap_or(0);
            for (k, pair) in versions.windows(2).enumerate() {
                let (newer, v) = (&pair[0], &pair[1]);
                // A version became noncurrent when its successor was written.
                if k < keep || now < due(newer.row.created_at, days) {
                    continue;
                }
                let gone = self
                    .engine
                    .delete_version(bucket, key, v.label(), true, false)
                    .await?;
                if gone.is_some() {
                    report.noncurrent_removed += 1;
                    let details = BTreeMap::from([
                        ("rule".to_string(), rule.id.clone()),
                        ("version_id".to_string(), v.label().to_string()),
                        ("delete_marker".to_string(), v.marker.to_string()),
                    ]);
                    self.record(bucket, "s3.lifecycle.delete_version", key, rule, details)
                        .await;
                }
            }
        }
        // A delete marker left alone is removed by ExpiredObjectDeleteMarker,
        // and (as S3 does) by an expiration in days.
        let markers =
            rule.expired_object_delete_marker == Some(true) || rule.expiration_days.is_some();
        if markers && latest.marker && versions.len() == 1 {
            let gone = self
                .engine
                .delete_version(bucket, key, latest.label(), false, true)
                .await?;
            if gone.is_some() {
                report.markers_removed += 1;
                let details = BTreeMap::from([
                    ("rule".to_string(), rule.id.clone()),
                    ("version_id".to_string(), latest.label().to_string()),
                ]);
                self.record(bucket, "s3.lifecycle.delete_marker", key, rule, details)
                    .await;
            }
        }
        Ok(())
    }

    async fn abort_uploads(
        &self,
        bucket: &BucketRow,
        rule: &Rule,
        days: i32,
        now: i64,
        report: &mut Report,
    ) -> ApiResult<()> {
        let prefix_hex = nuage_store::key_hex(&rule.prefix);
        let (mut after_hex, mut after_upload) = (String::new(), None::<String>);
        loop {
            let ups = self
                .engine
                .store()
                .upload_list(
                    &bucket.id,
                    &prefix_hex,
                    &after_hex,
                    after_upload.as_deref(),
                    1000,
                )
                .await?;
            let done = ups.len() < 1000;
            for u in ups {
                after_hex = nuage_store::key_hex(&u.key);
                after_upload = Some(u.upload_id.clone());
                if now < due(u.created_at, days) {
                    continue;
                }
                if self.engine.abort_upload(bucket, &u.upload_id).await? {
                    report.uploads_aborted += 1;
                    let details = BTreeMap::from([
                        ("rule".to_string(), rule.id.clone()),
                        ("upload_id".to_string(), u.upload_id.clone()),
                    ]);
                    self.record(bucket, "s3.lifecycle.abort_upload", &u.key, rule, details)
                        .await;
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Writes one lifecycle action to the organization's audit log.
    async fn record(
        &self,
        bucket: &BucketRow,
        action: &str,
        key: &str,
        rule: &Rule,
        details: BTreeMap<String, String>,
    ) {
        let record = AuditRecord {
            time: now_ms(),
            request_id: String::new(),
            principal: "system".into(),
            principal_name: "bucket lifecycle rules".into(),
            source: String::new(),
            method: String::new(),
            path: String::new(),
            action: action.into(),
            resource: format!("bucket:{}/{key}", bucket.name),
            decision: "allow".into(),
            policies: vec![format!("lifecycle:{}", rule.id)],
            status: 200,
            details,
        };
        if let Err(e) = self.audit.record(&bucket.org_id, record).await {
            tracing::error!(error = %e.detail, "audit entry of a lifecycle action not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_rounds_to_the_next_midnight() {
        let jan1_1030 = 10 * 3_600_000 + 30 * 60_000;
        assert_eq!(due(jan1_1030, 1), 2 * DAY_MS);
        assert_eq!(due(0, 1), DAY_MS);
        assert_eq!(due(DAY_MS - 1, 2), 3 * DAY_MS);
    }
}
