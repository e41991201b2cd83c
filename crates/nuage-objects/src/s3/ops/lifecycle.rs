//! Put/Get/DeleteBucketLifecycleConfiguration: AWS's XML rules validated
//! as AWS does and stored as [`crate::lifecycle::Rule`]s. What nuage cannot
//! honour (filters by tag or size, storage class transitions) is refused
//! with NotImplemented rather than accepted and silently ignored, since a
//! client relying on such a rule would keep or lose data unexpectedly.
//!
//! Reading the rules is `s3.get_lifecycle` (readers); setting or deleting
//! them is `s3.put_lifecycle` (bucket-admin), like AWS's single
//! PutLifecycleConfiguration permission for both.

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::{s3_err, timestamp, Call, Objects};
use crate::lifecycle::{self, Rule, DAY_MS, MAX_RULES};

fn positive(v: Option<i32>, what: &str) -> S3Result<i32> {
    match v {
        Some(d) if d > 0 => Ok(d),
        _ => Err(s3_error!(
            InvalidArgument,
            "'{what}' must be a positive integer"
        )),
    }
}

fn unsupported_filter() -> s3s::S3Error {
    s3_error!(
        NotImplemented,
        "lifecycle filters by tag or object size are not supported: filter by Prefix"
    )
}

/// One rule of a PutBucketLifecycleConfiguration, checked.
fn rule_from(r: &LifecycleRule, n: usize) -> S3Result<Rule> {
    let enabled = match r.status.as_str() {
        ExpirationStatus::ENABLED => true,
        ExpirationStatus::DISABLED => false,
        _ => {
            return Err(s3_error!(
                MalformedXML,
                "a rule's Status must be Enabled or Disabled"
            ))
        }
    };
    let id = match &r.id {
        Some(id) if id.len() > 255 => {
            return Err(s3_error!(
                InvalidArgument,
                "ID length should not exceed allowed limit of 255"
            ))
        }
        Some(id) if !id.is_empty() => id.clone(),
        _ => format!("rule-{}", n + 1),
    };
    if r.transitions.as_ref().is_some_and(|t| !t.is_empty())
        || r.noncurrent_version_transitions
            .as_ref()
            .is_some_and(|t| !t.is_empty())
    {
        return Err(s3_error!(
            NotImplemented,
            "storage class transitions are not supported: nuage has one storage class"
        ));
    }
    let (prefix, legacy_prefix) = match (&r.filter, &r.prefix) {
        (Some(_), Some(_)) => {
            return Err(s3_error!(
                MalformedXML,
                "a rule has either a Filter or a Prefix, not both"
            ))
        }
        (None, Some(p)) => (p.clone(), true),
        (None, None) => {
            return Err(s3_error!(
                MalformedXML,
                "a rule needs a Filter (or the legacy Prefix)"
            ))
        }
        (Some(f), None) => {
            if f.tag.is_some()
                || f.object_size_greater_than.is_some()
                || f.object_size_less_than.is_some()
            {
                return Err(unsupported_filter());
            }
            match &f.and {
                Some(a) => {
                    if a.tags.as_ref().is_some_and(|t| !t.is_empty())
                        || a.object_size_greater_than.is_some()
                        || a.object_size_less_than.is_some()
                    {
                        return Err(unsupported_filter());
                    }
                    if f.prefix.is_some() {
                        return Err(s3_error!(
                            MalformedXML,
                            "a Filter holds one of Prefix, Tag, ObjectSize… or And"
                        ));
                    }
                    (a.prefix.clone().unwrap_or_default(), false)
                }
                None => (f.prefix.clone().unwrap_or_default(), false),
            }
        }
    };
    if prefix.len() > 1024 {
        return Err(s3_error!(InvalidArgument, "the rule's prefix is too long"));
    }
    let mut rule = Rule {
        id,
        enabled,
        prefix,
        legacy_prefix,
        ..Default::default()
    };
    if let Some(e) = &r.expiration {
        let given = [
            e.days.is_some(),
            e.date.is_some(),
            e.expired_object_delete_marker.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given == 0 {
            return Err(s3_error!(
                MalformedXML,
                "an Expiration needs Days, Date or ExpiredObjectDeleteMarker"
            ));
        }
        if e.expired_object_delete_marker.is_some() && given > 1 {
            return Err(s3_error!(
                InvalidArgument,
                "ExpiredObjectDeleteMarker cannot be specified with Days or Date in a Lifecycle \
                 Expiration Policy"
            ));
        }
        if given > 1 {
            return Err(s3_error!(
                InvalidArgument,
                "an Expiration has Days or Date, not both"
            ));
        }
        if e.days.is_some() {
            rule.expiration_days = Some(positive(e.days, "Days' for Expiration action")?);
        }
        if let Some(d) = &e.date {
            let t = time::OffsetDateTime::from(d.clone());
            let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| s3_error!(InvalidArgument, "'Date' is out of range"))?;
            if ms.rem_euclid(DAY_MS) != 0 {
                return Err(s3_error!(InvalidArgument, "'Date' must be at midnight GMT"));
            }
            rule.expiration_date = Some(ms);
        }
        rule.expired_object_delete_marker = e.expired_object_delete_marker;
    }
    if let Some(n) = &r.noncurrent_version_expiration {
        rule.noncurrent_days = Some(positive(
            n.noncurrent_days,
            "NoncurrentDays' for NoncurrentVersionExpiration action",
        )?);
        if let Some(k) = n.newer_noncurrent_versions {
            if !(1..=100).contains(&k) {
                return Err(s3_error!(
                    InvalidArgument,
                    "'NewerNoncurrentVersions' must be between 1 and 100"
                ));
            }
            rule.newer_noncurrent_versions = Some(k);
        }
    }
    if let Some(a) = &r.abort_incomplete_multipart_upload {
        rule.abort_days = Some(positive(
            a.days_after_initiation,
            "DaysAfterInitiation' for AbortIncompleteMultipartUpload action",
        )?);
    }
    let acts = rule.expiration_days.is_some()
        || rule.expiration_date.is_some()
        || rule.expired_object_delete_marker.is_some()
        || rule.noncurrent_days.is_some()
        || rule.abort_days.is_some();
    if !acts {
        return Err(s3_error!(
            InvalidRequest,
            "At least one action needs to be specified in a rule"
        ));
    }
    Ok(rule)
}

/// A stored rule in AWS's form.
fn rule_to(r: &Rule) -> LifecycleRule {
    let expiration = (r.expiration_days.is_some()
        || r.expiration_date.is_some()
        || r.expired_object_delete_marker.is_some())
    .then(|| LifecycleExpiration {
        days: r.expiration_days,
        date: r.expiration_date.map(timestamp),
        expired_object_delete_marker: r.expired_object_delete_marker,
    });
    let (filter, prefix) = if r.legacy_prefix {
        (None, Some(r.prefix.clone()))
    } else {
        (
            Some(LifecycleRuleFilter {
                prefix: Some(r.prefix.clone()),
                ..Default::default()
            }),
            None,
        )
    };
    LifecycleRule {
        id: Some(r.id.clone()),
        status: ExpirationStatus::from_static(if r.enabled {
            ExpirationStatus::ENABLED
        } else {
            ExpirationStatus::DISABLED
        }),
        filter,
        prefix,
        expiration,
        noncurrent_version_expiration: r.noncurrent_days.map(|d| NoncurrentVersionExpiration {
            noncurrent_days: Some(d),
            newer_noncurrent_versions: r.newer_noncurrent_versions,
        }),
        abort_incomplete_multipart_upload: r.abort_days.map(|d| AbortIncompleteMultipartUpload {
            days_after_initiation: Some(d),
        }),
        noncurrent_version_transitions: None,
        transitions: None,
    }
}

impl Objects {
    pub(super) async fn put_lifecycle_inner(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let call = Call::of(&req)?;
        let input = req.input;
        let b = self
            .bucket(&call, "s3.put_lifecycle", &input.bucket)
            .await?;
        let cfg = input
            .lifecycle_configuration
            .ok_or_else(|| s3_error!(MalformedXML, "no LifecycleConfiguration"))?;
        if cfg.rules.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "a lifecycle configuration needs rules"
            ));
        }
        if cfg.rules.len() > MAX_RULES {
            return Err(s3_error!(
                MalformedXML,
                "a lifecycle configuration holds at most {MAX_RULES} rules"
            ));
        }
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(n, r)| rule_from(r, n))
            .collect::<S3Result<Vec<_>>>()?;
        let mut ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(s3_error!(
                InvalidArgument,
                "Rule ID must be unique. Found same ID for more than one rule"
            ));
        }
        call.detail("rules", &rules.len().to_string());
        let stored = lifecycle::encode(&rules).map_err(s3_err)?;
        self.engine
            .store()
            .bucket_lifecycle_set(&b.id, &stored)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(
            PutBucketLifecycleConfigurationOutput::default(),
        ))
    }

    pub(super) async fn get_lifecycle_inner(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.get_lifecycle", &req.input.bucket)
            .await?;
        let stored = self
            .engine
            .store()
            .bucket_lifecycle(&b.id)
            .await
            .map_err(s3_err)?;
        let rules = lifecycle::decode(&stored).map_err(s3_err)?;
        if rules.is_empty() {
            return Err(s3_error!(
                NoSuchLifecycleConfiguration,
                "The lifecycle configuration does not exist"
            ));
        }
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput {
            rules: Some(rules.iter().map(rule_to).collect()),
            ..Default::default()
        }))
    }

    pub(super) async fn delete_lifecycle_inner(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        let call = Call::of(&req)?;
        let b = self
            .bucket(&call, "s3.put_lifecycle", &req.input.bucket)
            .await?;
        self.engine
            .store()
            .bucket_lifecycle_set(&b.id, "")
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(DeleteBucketLifecycleOutput {}))
    }
}
