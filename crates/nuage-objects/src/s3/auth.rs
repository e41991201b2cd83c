//! Authentication of S3 requests: `s3s` asks for the secret of an access key
//! to check the signature; the principal behind the key is kept for the
//! access check that follows, which hands the subject to the operations.
//! Anonymous requests pass this check only to read an object: the
//! operation then serves them from a public-read bucket alone. A signed
//! request must also still be fresh ([`super::freshness`]): judged here,
//! after the signature, so its audit entry names the key's holder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nuage_iam::{Authenticator, Subject};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use time::OffsetDateTime;

use super::freshness::signed_in_time;
use super::front::ReqCtx;

/// How long a looked-up principal waits for its access check.
const KEEP: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<HashMap<String, (Instant, Subject)>>>);

impl Seen {
    fn put(&self, key: &str, subject: Subject) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() > 10_000 {
                m.retain(|_, (t, _)| t.elapsed() < KEEP);
            }
            m.insert(key.to_string(), (Instant::now(), subject));
        }
    }

    fn get(&self, key: &str) -> Option<Subject> {
        let m = self.0.lock().ok()?;
        m.get(key)
            .filter(|(t, _)| t.elapsed() < KEEP)
            .map(|(_, s)| s.clone())
    }
}

pub struct Auth {
    pub authn: Authenticator,
    pub seen: Seen,
}

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.authn.access_key(access_key).await {
            Ok(a) => {
                self.seen.put(access_key, a.subject);
                Ok(SecretKey::from(a.secret.as_str()))
            }
            Err(e) if e.status == http::StatusCode::UNAUTHORIZED => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
            Err(e) if e.status == http::StatusCode::SERVICE_UNAVAILABLE => {
                Err(s3_error!(ServiceUnavailable, "{}", e.detail))
            }
            Err(e) => {
                tracing::error!(error = %e.detail, "access key lookup failed");
                Err(s3_error!(InternalError))
            }
        }
    }
}

/// Marks an unsigned request (allowed to reach object reads only).
#[derive(Clone, Copy)]
pub struct Anonymous;

pub struct Access {
    pub seen: Seen,
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            if matches!(cx.s3_op().name(), "GetObject" | "HeadObject") {
                cx.extensions_mut().insert(Anonymous);
                return Ok(());
            }
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are refused: sign requests with an access key"
            ));
        };
        let access_key = creds.access_key.clone();
        let subject = self
            .seen
            .get(&access_key)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
        // A POST form's policy carries its own expiration (checked by s3s).
        let fresh = if cx.s3_op().name() == "PostObject" {
            Ok(())
        } else {
            signed_in_time(cx.headers(), cx.uri().query(), OffsetDateTime::now_utc())
        };
        if let Some(r) = cx.extensions_mut().get::<ReqCtx>() {
            r.slot.update(|a| {
                a.principal_id = Some(subject.principal.id.clone());
                a.principal_name = subject.principal.name.clone();
                a.log_id = Some(subject.principal.org_id.clone());
                a.details.insert("access_key".into(), access_key);
                if let Err(e) = &fresh {
                    a.details
                        .insert("auth_error".into(), e.code().as_str().to_string());
                }
            });
        }
        fresh?;
        cx.extensions_mut().insert(subject);
        Ok(())
    }
}
