//! Authentication: bearer tokens for every request, passwords (with TOTP
//! and lockout) to obtain a short-lived session token.
//!
//! Token lookups are cached in-process for at most [`CACHE_TTL`]; any change
//! made through this process (the store's epoch) empties the cache at once,
//! so a revocation is immediate here and takes effect within `CACHE_TTL` on
//! the other servers of a scale-out installation.
//!
//! Two realms: tenants (users and service accounts of organizations) and
//! operators. A token of one realm is refused on the other realm's listener,
//! so an operator credential can never reach tenant data through the tenant
//! API, and tenant credentials never reach the admin API.

use std::sync::Arc;
use std::time::Duration;

use nuage_core::id::{new_id, Kind};
use nuage_core::model::{
    AccessKey, AccessKeyCreated, Org, Principal, PrincipalKind, Session, Token, TokenSecret,
};
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_store::{NewToken, Store, TokenAuth};

use crate::{password, secret, totp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    Tenant,
    Operator,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Subject {
    pub principal: Principal,
    pub group_ids: Vec<String>,
    pub token_id: String,
    /// The credential was obtained with a second factor.
    pub mfa: bool,
    pub org_policy_generation: i64,
    pub org_mfa_roles: Vec<String>,
    /// The principal's organization (`None` for operators).
    pub org: Option<Org>,
}

pub(crate) use nuage_store::cache::TtlCache as Cache;
pub use nuage_store::cache::CACHE_TTL;

#[derive(Debug, Clone)]
pub struct LoginPolicy {
    pub session_ttl: Duration,
    /// Consecutive failures before the first lockout.
    pub max_failures: i64,
    pub first_lockout: Duration,
    pub max_lockout: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            session_ttl: Duration::from_secs(12 * 3600),
            max_failures: 5,
            first_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(15 * 60),
        }
    }
}

/// Seals and opens small platform secrets (second-factor seeds); the key
/// service implements it, so this crate needs no key material of its own.
pub trait SecretBox: Send + Sync {
    fn seal_text(&self, purpose: &str, plaintext: &str) -> ApiResult<String>;
    fn open_text(&self, purpose: &str, stored: &str) -> ApiResult<zeroize::Zeroizing<String>>;
}

/// An authenticated S3 access key: who signs, and with which secret.
pub struct AccessKeyAuth {
    pub subject: Subject,
    pub secret: zeroize::Zeroizing<String>,
}

/// What an access key's secret is sealed for.
pub fn access_key_purpose(access_key_id: &str) -> String {
    format!("s3-secret:{access_key_id}")
}

/// What a principal's TOTP seed is sealed for.
pub fn totp_purpose(principal_id: &str) -> String {
    format!("totp:{principal_id}")
}

/// How often a token's `last_used_at` is written: reads stay reads.
const TOUCH_EVERY_MS: i64 = 60_000;

pub const DEFAULT_TOKEN_TTL_SECS: i64 = 90 * 24 * 3600;
pub const MAX_TOKEN_TTL_SECS: i64 = 366 * 24 * 3600;

#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    policy: LoginPolicy,
    decoy: String,
    cache: Arc<Cache<String, TokenAuth>>,
    /// Access keys with their opened secret (opening it derives a key and
    /// decrypts, on every S3 request otherwise); same epoch and TTL rules.
    keys: Arc<Cache<String, (nuage_store::AccessKeyAuth, zeroize::Zeroizing<String>)>>,
    secrets: Option<Arc<dyn SecretBox>>,
}

fn bad_credentials() -> ApiError {
    ApiError::unauthenticated("invalid name, password or second factor")
}

impl Authenticator {
    pub fn new(store: Store, policy: LoginPolicy) -> Self {
        Authenticator {
            store,
            policy,
            decoy: password::decoy_hash(),
            cache: Arc::new(Cache::new()),
            keys: Arc::new(Cache::new()),
            secrets: None,
        }
    }

    /// Opens second-factor seeds sealed by the key service.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretBox>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    fn totp_seed(&self, principal_id: &str, stored: &str) -> ApiResult<zeroize::Zeroizing<String>> {
        match &self.secrets {
            Some(s) => s.open_text(&totp_purpose(principal_id), stored),
            None => Ok(zeroize::Zeroizing::new(stored.to_string())),
        }
    }

    pub fn policy(&self) -> &LoginPolicy {
        &self.policy
    }

    /// Resolves a bearer token, refusing unknown, expired and revoked ones
    /// and tokens of the other realm.
    pub async fn authenticate(&self, bearer: &str, realm: Realm) -> ApiResult<Subject> {
        let hash = secret::hash_token(bearer);
        let epoch = self.store.epoch();
        let auth = match self.cache.get(&hash, epoch) {
            Some(a) => a,
            None => {
                let found = self.store.token_authenticate(&hash).await?;
                let Some(a) = found else {
                    return Err(ApiError::unauthenticated("unknown token"));
                };
                self.cache.put(hash.clone(), epoch, a.clone());
                a
            }
        };
        let now = now_ms();
        if auth.token.revoked_at.is_some() {
            return Err(ApiError::unauthenticated("this token was revoked"));
        }
        if auth.token.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::unauthenticated(
                "this token has expired; log in again",
            ));
        }
        let is_operator = auth.principal.kind == PrincipalKind::Operator;
        match (realm, is_operator) {
            (Realm::Tenant, true) => {
                return Err(ApiError::unauthenticated(
                    "operator tokens are accepted only on the admin listener",
                ))
            }
            (Realm::Operator, false) => {
                return Err(ApiError::unauthenticated(
                    "this listener accepts only operator tokens",
                ))
            }
            _ => {}
        }
        if auth
            .token
            .last_used_at
            .is_none_or(|t| now - t > TOUCH_EVERY_MS)
        {
            self.store.token_touch(&auth.token.id, now).await?;
            self.cache
                .update(&hash, |a| a.token.last_used_at = Some(now));
        }
        Ok(Subject {
            principal: auth.principal,
            group_ids: auth.group_ids,
            token_id: auth.token.id,
            mfa: auth.token.mfa,
            org_policy_generation: auth.org_policy_generation,
            org_mfa_roles: auth.org_mfa_roles,
            org: auth.org,
        })
    }

    /// Creates an S3 access key for `principal`: the secret is returned once
    /// and stored sealed by the key service.
    pub async fn issue_access_key(
        &self,
        principal: &Principal,
        description: &str,
    ) -> ApiResult<AccessKeyCreated> {
        let secrets = self.secrets.as_ref().ok_or_else(|| {
            ApiError::unavailable("access keys need the key service").with_code("sealed")
        })?;
        let (id, secret) = secret::new_access_key();
        let key = AccessKey {
            id: id.clone(),
            org_id: principal.org_id.clone(),
            principal_id: principal.id.clone(),
            description: description.to_string(),
            created_at: now_ms(),
            last_used_at: None,
            revoked_at: None,
        };
        let sealed = secrets.seal_text(&access_key_purpose(&id), &secret)?;
        self.store.access_key_create(&key, &sealed).await?;
        Ok(AccessKeyCreated {
            access_key: key,
            secret_access_key: secret.to_string(),
        })
    }

    /// The principal behind an S3 access key, and the secret its requests
    /// are signed with. Unknown and revoked keys are refused alike.
    pub async fn access_key(&self, access_key_id: &str) -> ApiResult<AccessKeyAuth> {
        let unknown = || {
            ApiError::unauthenticated("unknown or revoked access key")
                .with_code("invalid_access_key")
        };
        let epoch = self.store.epoch();
        let (found, secret) = match self.keys.get(&access_key_id.to_string(), epoch) {
            Some(a) => a,
            None => {
                let a = self
                    .store
                    .access_key_authenticate(access_key_id)
                    .await?
                    .ok_or_else(unknown)?;
                if a.key.revoked_at.is_some() {
                    return Err(unknown());
                }
                let secrets = self.secrets.as_ref().ok_or_else(|| {
                    ApiError::unavailable("access keys need the key service").with_code("sealed")
                })?;
                let secret =
                    secrets.open_text(&access_key_purpose(access_key_id), &a.sealed_secret)?;
                self.keys.put(
                    access_key_id.to_string(),
                    epoch,
                    (a.clone(), secret.clone()),
                );
                (a, secret)
            }
        };
        if found.key.revoked_at.is_some() {
            return Err(unknown());
        }
        let now = now_ms();
        if found
            .key
            .last_used_at
            .is_none_or(|t| now - t > TOUCH_EVERY_MS)
        {
            self.store.access_key_touch(access_key_id, now).await?;
            self.keys.update(&access_key_id.to_string(), |a| {
                a.0.key.last_used_at = Some(now)
            });
        }
        // Read with the key and cached with it, like a token's: a policy
        // change here empties the cache (the epoch), on another server of a
        // shared database it is seen within `CACHE_TTL`.
        Ok(AccessKeyAuth {
            subject: Subject {
                principal: found.principal,
                group_ids: found.group_ids,
                token_id: found.key.id,
                mfa: false,
                org_policy_generation: found.org_policy_generation,
                org_mfa_roles: found.org.mfa_required_roles.clone(),
                org: Some(found.org),
            },
            secret,
        })
    }

    /// Issues a token to `principal`; the secret is returned once.
    pub async fn issue_token(
        &self,
        principal: &Principal,
        name: &str,
        kind: &str,
        mfa: bool,
        ttl_secs: i64,
    ) -> ApiResult<TokenSecret> {
        let (token, new) = new_token(principal, name, kind, mfa, ttl_secs);
        self.store.token_create(&new).await?;
        Ok(token)
    }

    /// Password (and TOTP) login in an organization (`org_id`) or, with
    /// `org_id = ""`, in the operator realm.
    pub async fn login(
        &self,
        org_id: &str,
        kind: PrincipalKind,
        name: &str,
        password_text: &str,
        totp_code: Option<&str>,
    ) -> ApiResult<Session> {
        let creds = self.store.principal_credentials(org_id, kind, name).await?;
        let Some(creds) = creds else {
            let decoy = self.decoy.clone();
            let pw = password_text.to_string();
            let _ = tokio::task::spawn_blocking(move || password::verify(&pw, &decoy)).await;
            return Err(bad_credentials());
        };
        let now = now_ms();
        if let Some(until) = creds.principal.locked_until.filter(|u| *u > now) {
            let secs = ((until - now) / 1000).max(1) as u64;
            return Err(ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "account_locked",
                format!("too many failed logins; try again in {secs} s"),
            )
            .with_retry_after(secs));
        }
        let Some(hash) = creds.password_hash.clone() else {
            return Err(bad_credentials());
        };
        let pw = password_text.to_string();
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
            .await
            .map_err(|_| ApiError::internal("password check failed"))?;
        let second = match (&creds.totp_secret, totp_code) {
            (Some(secret), Some(code)) => totp::check(
                &self.totp_seed(&creds.principal.id, secret)?,
                code,
                (now / 1000) as u64,
            )?,
            (Some(_), None) => false,
            (None, _) => true,
        };
        // A right password without the code it needs is not a failed guess:
        // the client is told to ask for the code (wrong passwords still count).
        if ok && creds.totp_secret.is_some() && totp_code.is_none() {
            return Err(
                ApiError::unauthenticated("a TOTP code is required for this account")
                    .with_code("mfa_required"),
            );
        }
        if !ok || !second {
            let failed = creds.failed_logins + 1;
            let locked = (failed >= self.policy.max_failures).then(|| {
                let exp = (failed - self.policy.max_failures).min(20) as u32;
                let lock = self
                    .policy
                    .first_lockout
                    .saturating_mul(2u32.saturating_pow(exp))
                    .min(self.policy.max_lockout);
                now + lock.as_millis() as i64
            });
            self.store
                .principal_login_failed(&creds.principal.id, failed, locked)
                .await?;
            return Err(bad_credentials());
        }
        if kind == PrincipalKind::Operator && creds.totp_secret.is_none() {
            return Err(ApiError::forbidden(
                "operators must enrol a TOTP second factor before logging in with a password; \
                 enrol with the bootstrap or enrolment token (POST /admin/v1/me/mfa)",
            )
            .with_code("mfa_enrollment_required"));
        }
        self.store
            .principal_login_succeeded(&creds.principal.id)
            .await?;
        let ttl = self.policy.session_ttl.as_secs() as i64;
        let token = self
            .issue_token(
                &creds.principal,
                "session",
                "session",
                creds.totp_secret.is_some(),
                ttl,
            )
            .await?;
        Ok(Session {
            principal: creds.principal,
            token,
        })
    }
}

/// Builds a token and its stored form without writing it.
pub fn new_token(
    principal: &Principal,
    name: &str,
    kind: &str,
    mfa: bool,
    ttl_secs: i64,
) -> (TokenSecret, NewToken) {
    let secret = secret::new_token();
    let now = now_ms();
    let token = Token {
        id: new_id(Kind::Token),
        name: name.to_string(),
        principal_id: principal.id.clone(),
        kind: kind.to_string(),
        mfa,
        expires_at: Some(now + ttl_secs * 1000),
        revoked_at: None,
        last_used_at: None,
        created_at: now,
    };
    let stored = NewToken {
        token: token.clone(),
        org_id: principal.org_id.clone(),
        secret_hash: secret::hash_token(&secret),
    };
    (TokenSecret { token, secret }, stored)
}

impl Authenticator {
    /// Checks a principal's current password (for self-service changes),
    /// counting failures like a login does.
    pub async fn check_password(
        &self,
        principal: &Principal,
        password_text: &str,
    ) -> ApiResult<()> {
        let creds = self
            .store
            .principal_credentials(&principal.org_id, principal.kind, &principal.name)
            .await?
            .ok_or_else(bad_credentials)?;
        // A principal without a password yet (the bootstrap operator, a user
        // created without one) sets its first one with its token alone.
        let Some(hash) = creds.password_hash else {
            return Ok(());
        };
        let pw = password_text.to_string();
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
            .await
            .map_err(|_| ApiError::internal("password check failed"))?;
        if ok {
            Ok(())
        } else {
            self.store
                .principal_login_failed(&principal.id, creds.failed_logins + 1, None)
                .await?;
            Err(ApiError::forbidden("the current password is wrong").with_code("wrong_password"))
        }
    }
}
