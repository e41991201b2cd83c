//! The key service proper: project keys and their versions, data keys
//! wrapped by them, and the uses other services make of them.
//!
//! Rules every path keeps:
//! - a key is used only while `enabled`, and only for a purpose it accepts;
//! - key material held by nuage is wrapped by the root key, data keys by a
//!   key version (or by the external manager), each bound by associated data
//!   to its key, version, data-key id and owner;
//! - unwrapped keys are cached for at most the configured TTL, so a key
//!   disabled on another server or revoked on an external manager stops
//!   working within that time;
//! - each use returns a [`KeyUse`], which the caller records in the audit
//!   entry of the request it serves.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hkdf::Hkdf;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::kms::{
    Justification, Key, KeyManager, KeyManagerKind, KeyState, KeyVersion, KmipEndpoint,
    TransitEndpoint,
};
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_store::{DataKeyRow, KeyRow, KeyVersionRow, ManagerRow, RootRow, Store};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::aead::{self, SecretKey};
use crate::cache::TtlCache;
use crate::external::{kmip, transit, ExternalClient, ExternalError};
use crate::root::{self, SealConfig, SealParams};

#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// How long unwrapped keys stay in memory.
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
    /// Bound on each call to an external key manager.
    pub external_timeout: Duration,
    /// How often a server whose root key is sealed by an unreachable KMIP
    /// server tries again.
    pub unseal_retry: Duration,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            external_timeout: Duration::from_secs(5),
            unseal_retry: Duration::from_secs(5),
        }
    }
}

/// The project key that encrypts new buckets, volumes and images unless
/// the tenant names another.
pub const DEFAULT_KEY: &str = "default";

/// Who uses a key, and why.
#[derive(Debug, Clone)]
pub struct Purpose {
    pub justification: Justification,
    /// The principal a service acts for, or the caller of the API.
    pub principal: Option<String>,
    pub request_id: Option<String>,
}

impl Purpose {
    pub fn new(justification: Justification) -> Self {
        Purpose {
            justification,
            principal: None,
            request_id: None,
        }
    }
}

/// One use of a key, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub key_id: String,
    pub key_version: i64,
    pub operation: &'static str,
    pub justification: Justification,
    pub on_behalf_of: Option<String>,
    pub data_key: Option<String>,
}

impl KeyUse {
    pub fn details(&self) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        d.insert("key_id".into(), self.key_id.clone());
        d.insert("key_version".into(), self.key_version.to_string());
        d.insert("key_operation".into(), self.operation.to_string());
        d.insert(
            "justification".into(),
            self.justification.as_str().to_string(),
        );
        if let Some(p) = &self.on_behalf_of {
            d.insert("on_behalf_of".into(), p.clone());
        }
        if let Some(k) = &self.data_key {
            d.insert("data_key".into(), k.clone());
        }
        d
    }
}

/// A fresh data key and the id under which its wrapped form is stored.
pub struct DataKey {
    pub id: String,
    pub key: SecretKey,
    pub key_version: i64,
}

#[derive(Clone)]
struct CachedDek {
    key: SecretKey,
    key_id: String,
    version: i64,
    owner: String,
}

struct Inner {
    store: Store,
    cfg: KmsConfig,
    seal: SealConfig,
    root: RwLock<Option<Unsealed>>,
    deks: TtlCache<String, CachedDek>,
    keks: TtlCache<(String, i64), SecretKey>,
    keys: TtlCache<String, Arc<KeyRow>>,
    managers: TtlCache<String, (String, ExternalClient)>,
}

#[derive(Clone)]
struct Unsealed {
    root: SecretKey,
    platform: SecretKey,
}

#[derive(Clone)]
pub struct Kms(Arc<Inner>);

/// Why a KMIP-sealed root did not open: for good, or for now.
enum KmipUnseal {
    Wrong(String),
    Later(String),
}

const ENVELOPE_MAGIC: &[u8; 4] = b"NKE1";
const SEALED_MAGIC: &[u8; 4] = b"NKS1";
const SEALED_TEXT: &str = "sealed:v1:";
/// Largest plaintext the encrypt endpoint and `seal` take.
pub const MAX_PLAINTEXT: usize = 64 * 1024;

fn kek_aad(key_id: &str, version: i64) -> Vec<u8> {
    format!("nuage kek v1|{key_id}|{version}").into_bytes()
}

fn dek_aad(key_id: &str, version: i64, dek_id: &str, owner: &str) -> Vec<u8> {
    format!("nuage dek v1|{key_id}|{version}|{dek_id}|{owner}").into_bytes()
}

fn state_of(k: &KeyRow) -> KeyState {
    KeyState::parse(&k.state).unwrap_or(KeyState::Disabled)
}

pub fn justifications_of(k: &KeyRow) -> Option<Vec<Justification>> {
    k.justifications.as_deref().map(|j| {
        serde_json::from_str::<Vec<String>>(j)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| Justification::parse(s))
            .collect()
    })
}

pub fn justifications_text(j: &Option<Vec<Justification>>) -> Option<String> {
    j.as_ref().map(|list| {
        let names: Vec<&str> = list.iter().map(|j| j.as_str()).collect();
        serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
    })
}

fn manager_error(manager: &str, key_ref: &str, e: ExternalError) -> ApiError {
    match e {
        ExternalError::Unreachable(m) => ApiError::unavailable(format!(
            "key manager {manager:?} is unreachable ({m}); data protected by external key \
             {key_ref:?} cannot be read until it answers"
        ))
        .with_code("key_manager_unavailable")
        .with_retry_after(5),
        ExternalError::KeyUnusable(m) => ApiError::conflict(
            "external_key_unusable",
            format!("key manager {manager:?} refuses to use external key {key_ref:?}: {m}"),
        ),
        ExternalError::Protocol(m) => ApiError::unavailable(format!(
            "key manager {manager:?} answered unexpectedly for external key {key_ref:?}: {m}"
        ))
        .with_code("key_manager_error"),
    }
}

impl Kms {
    /// Opens the key service, unsealing (or at first start, creating and
    /// sealing) the root key when the configuration allows; otherwise the
    /// service stays sealed until [`Kms::unseal_with_passphrase`].
    pub async fn load(store: Store, seal: SealConfig, cfg: KmsConfig) -> Result<Kms, String> {
        let kms = Kms(Arc::new(Inner {
            deks: TtlCache::new(cfg.cache_ttl, cfg.cache_capacity),
            keks: TtlCache::new(cfg.cache_ttl, 10_000),
            keys: TtlCache::new(cfg.cache_ttl, 10_000),
            managers: TtlCache::new(cfg.cache_ttl, 1_000),
            store,
            cfg,
            seal,
            root: RwLock::new(None),
        }));
        let row = kms.0.store.kms_root_get().await.map_err(|e| e.detail)?;
        if let SealConfig::Kmip { .. } = &kms.0.seal {
            kms.load_kmip(row).await?;
            return Ok(kms);
        }
        let root = match row {
            Some(row) => {
                let params: SealParams = serde_json::from_str(&row.params)
                    .map_err(|e| format!("stored seal parameters: {e}"))?;
                root::unseal(&kms.0.seal, &row.method, &params, &row.sealed_root)
                    .map_err(|e| e.to_string())?
            }
            None => match root::seal_new(&kms.0.seal).map_err(|e| e.to_string())? {
                Some((root, params, sealed)) => kms
                    .install_new_root(root, params, sealed)
                    .await
                    .map_err(|e| e.detail)?,
                None => None,
            },
        };
        if let Some(root) = root {
            kms.set_root(root);
        }
        Ok(kms)
    }

    /// The KMIP method: seal a new root with the HSM's key, or open the
    /// stored one; when the HSM does not answer, stay sealed and retry.
    async fn load_kmip(&self, row: Option<RootRow>) -> Result<(), String> {
        let SealConfig::Kmip { config, key_id } = &self.0.seal else {
            return Ok(());
        };
        let client = kmip::KmipClient::new(config.clone()).map_err(|e| e.to_string())?;
        let row = match row {
            Some(row) => row,
            None => {
                let root = SecretKey::generate();
                let mut pt = Zeroizing::new(Vec::with_capacity(64));
                pt.extend_from_slice(root.expose());
                pt.extend_from_slice(&Sha256::digest(root::ROOT_AAD));
                let sealed = client.encrypt(key_id, &pt).await.map_err(|e| {
                    format!("cannot seal the new root key with KMIP key {key_id:?}: {e}")
                })?;
                let params = SealParams {
                    salt: None,
                    m_cost_kib: None,
                    t_cost: None,
                    kmip_key_id: Some(key_id.clone()),
                };
                let row = RootRow {
                    method: "kmip".into(),
                    params: serde_json::to_string(&params).map_err(|e| e.to_string())?,
                    sealed_root: B64.encode(sealed),
                    created_at: now_ms(),
                };
                self.0
                    .store
                    .kms_root_init(&row)
                    .await
                    .map_err(|e| e.detail)?
            }
        };
        if row.method != "kmip" {
            return Err(format!(
                "the root key of this installation is sealed with method {:?}, but the server                  was started with \"kmip\" (see --seal)",
                row.method
            ));
        }
        let params: SealParams = serde_json::from_str(&row.params)
            .map_err(|e| format!("stored seal parameters: {e}"))?;
        if params.kmip_key_id.as_deref() != Some(key_id.as_str()) {
            return Err(format!(
                "the root key is sealed by KMIP key {:?}, not {key_id:?}",
                params.kmip_key_id.unwrap_or_default()
            ));
        }
        match self.open_with_kmip(&client, key_id, &row.sealed_root).await {
            Ok(root) => {
                self.set_root(root);
                Ok(())
            }
            Err(KmipUnseal::Wrong(e)) => Err(e),
            Err(KmipUnseal::Later(e)) => {
                tracing::warn!(error = %e, "the root key's KMIP server does not answer; sealed until it does");
                let kms = self.clone();
                let (client, key_id, sealed) = (client, key_id.clone(), row.sealed_root);
                tokio::spawn(async move {
                    while kms.is_sealed() {
                        tokio::time::sleep(kms.0.cfg.unseal_retry).await;
                        match kms.open_with_kmip(&client, &key_id, &sealed).await {
                            Ok(root) => {
                                kms.set_root(root);
                                tracing::info!(
                                    "unsealed: the root key's KMIP server answers again"
                                );
                            }
                            Err(KmipUnseal::Later(e) | KmipUnseal::Wrong(e)) => {
                                tracing::warn!(error = %e, "still sealed")
                            }
                        }
                    }
                });
                Ok(())
            }
        }
    }

    async fn open_with_kmip(
        &self,
        client: &kmip::KmipClient,
        key_id: &str,
        sealed: &str,
    ) -> Result<SecretKey, KmipUnseal> {
        let raw = B64
            .decode(sealed)
            .map_err(|_| KmipUnseal::Wrong("the stored sealed root key is not base64".into()))?;
        let pt = client.decrypt(key_id, &raw).await.map_err(|e| match e {
            ExternalError::Unreachable(m) => KmipUnseal::Later(m),
            other => KmipUnseal::Later(format!("KMIP key {key_id:?}: {other}")),
        })?;
        if pt.len() != 64 || !bool::from(pt[32..].ct_eq(&Sha256::digest(root::ROOT_AAD))) {
            return Err(KmipUnseal::Wrong(format!(
                "KMIP key {key_id:?} does not open this installation's root key"
            )));
        }
        SecretKey::from_slice(&pt[..32])
            .ok_or_else(|| KmipUnseal::Wrong("the root key has the wrong length".into()))
    }

    async fn install_new_root(
        &self,
        root: SecretKey,
        params: SealParams,
        sealed: String,
    ) -> ApiResult<Option<SecretKey>> {
        let row = RootRow {
            method: self.0.seal.method().to_string(),
            params: serde_json::to_string(&params)
                .map_err(|e| ApiError::internal(e.to_string()))?,
            sealed_root: sealed.clone(),
            created_at: now_ms(),
        };
        let stored = self.0.store.kms_root_init(&row).await?;
        if stored.sealed_root == sealed {
            return Ok(Some(root));
        }
        // Another server of this installation sealed its root first: use it.
        let params: SealParams = serde_json::from_str(&stored.params)
            .map_err(|e| ApiError::internal(format!("stored seal parameters: {e}")))?;
        root::unseal(&self.0.seal, &stored.method, &params, &stored.sealed_root)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    fn set_root(&self, root: SecretKey) {
        let hk = Hkdf::<Sha256>::new(None, root.expose());
        let mut okm = Zeroizing::new([0u8; aead::KEY_LEN]);
        let _ = hk.expand(b"nuage platform secrets v1", okm.as_mut());
        let platform = SecretKey::from_slice(okm.as_ref()).unwrap_or_else(SecretKey::generate);
        if let Ok(mut g) = self.0.root.write() {
            *g = Some(Unsealed { root, platform });
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.0.root.read().map(|g| g.is_none()).unwrap_or(true)
    }

    pub fn seal_method(&self) -> &'static str {
        self.0.seal.method()
    }

    /// The unseal call: opens (or at first start, creates) the root key with
    /// an operator passphrase.
    pub async fn unseal_with_passphrase(&self, passphrase: &str) -> ApiResult<()> {
        if !self.is_sealed() {
            return Err(ApiError::conflict("not_sealed", "the server is not sealed"));
        }
        if !matches!(self.0.seal, SealConfig::Passphrase(_)) {
            return Err(ApiError::bad_request(
                "wrong_seal_method",
                "this server is not sealed by a passphrase",
            ));
        }
        let root = match self.0.store.kms_root_get().await? {
            Some(row) => {
                let params: SealParams = serde_json::from_str(&row.params)
                    .map_err(|e| ApiError::internal(format!("stored seal parameters: {e}")))?;
                root::unseal_with_passphrase(passphrase, &params, &row.sealed_root).map_err(
                    |e| match e {
                        root::SealError::WrongKey(_) => {
                            ApiError::forbidden("the passphrase does not unseal this installation")
                                .with_code("wrong_passphrase")
                        }
                        other => ApiError::bad_request("unseal_failed", other.to_string()),
                    },
                )?
            }
            None => {
                let cfg = SealConfig::Passphrase(Some(Zeroizing::new(passphrase.to_string())));
                let (root, params, sealed) = root::seal_new(&cfg)
                    .map_err(|e| ApiError::bad_request("unseal_failed", e.to_string()))?
                    .ok_or_else(|| ApiError::internal("passphrase missing"))?;
                self.install_new_root(root, params, sealed)
                    .await?
                    .ok_or_else(|| ApiError::internal("root key not installed"))?
            }
        };
        self.set_root(root);
        Ok(())
    }

    fn unsealed(&self) -> ApiResult<Unsealed> {
        self.0
            .root
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| {
                ApiError::unavailable("the key service is sealed; unseal the server first")
                    .with_code("sealed")
            })
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    // ---- platform secrets ---------------------------------------------------

    /// Seals a platform secret (a key manager credential, an OIDC client
    /// secret …) under the root key, bound to `purpose`.
    pub fn seal_platform(&self, purpose: &str, plaintext: &[u8]) -> ApiResult<String> {
        let u = self.unsealed()?;
        Ok(B64.encode(aead::wrap(&u.platform, purpose.as_bytes(), plaintext)))
    }

    pub fn open_platform(&self, purpose: &str, sealed: &str) -> ApiResult<Zeroizing<Vec<u8>>> {
        let u = self.unsealed()?;
        let raw = B64
            .decode(sealed)
            .map_err(|_| ApiError::internal("a sealed platform secret is not base64"))?;
        aead::unwrap(&u.platform, purpose.as_bytes(), &raw)
            .map_err(|_| ApiError::internal(format!("the platform secret {purpose} does not open")))
    }

    /// [`Kms::seal_platform`] for text settings: `sealed:v1:<base64>`.
    pub fn seal_text(&self, purpose: &str, plaintext: &str) -> ApiResult<String> {
        Ok(format!(
            "{SEALED_TEXT}{}",
            self.seal_platform(purpose, plaintext.as_bytes())?
        ))
    }

    /// Opens what [`Kms::seal_text`] made; values stored before sealing
    /// existed (no prefix) are returned as they are.
    pub fn open_text(&self, purpose: &str, stored: &str) -> ApiResult<Zeroizing<String>> {
        match stored.strip_prefix(SEALED_TEXT) {
            Some(sealed) => {
                let raw = self.open_platform(purpose, sealed)?;
                String::from_utf8(raw.to_vec())
                    .map(Zeroizing::new)
                    .map_err(|_| ApiError::internal("a sealed text setting is not UTF-8"))
            }
            None => Ok(Zeroizing::new(stored.to_string())),
        }
    }

    // ---- key managers ---------------------------------------------------------

    /// Registers an external key manager after checking its settings build a
    /// client; the credential is sealed, never returned.
    pub async fn manager_create(
        &self,
        org_id: &str,
        name: &str,
        kind: KeyManagerKind,
        config_json: String,
        secret: &str,
    ) -> ApiResult<ManagerRow> {
        let now = now_ms();
        let id = new_id(Kind::KeyManager);
        let row = ManagerRow {
            id: id.clone(),
            org_id: org_id.to_string(),
            name: name.to_string(),
            kind: match kind {
                KeyManagerKind::Kmip => "kmip",
                KeyManagerKind::Transit => "transit",
            }
            .to_string(),
            config: config_json,
            sealed_secret: self.seal_platform(&format!("manager:{id}"), secret.as_bytes())?,
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        self.client_for(&row)?;
        self.0.store.kms_manager_create(&row).await?;
        Ok(row)
    }

    pub fn manager_view(row: &ManagerRow) -> KeyManager {
        let (kind, kmip, transit) = if row.kind == "kmip" {
            (
                KeyManagerKind::Kmip,
                serde_json::from_str::<KmipEndpoint>(&row.config).ok(),
                None,
            )
        } else {
            (
                KeyManagerKind::Transit,
                None,
                serde_json::from_str::<TransitEndpoint>(&row.config).ok(),
            )
        };
        KeyManager {
            id: row.id.clone(),
            org_id: row.org_id.clone(),
            name: row.name.clone(),
            kind,
            kmip,
            transit,
            generation: row.generation,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    fn client_for(&self, row: &ManagerRow) -> ApiResult<ExternalClient> {
        let secret = self.open_platform(&format!("manager:{}", row.id), &row.sealed_secret)?;
        let secret = String::from_utf8(secret.to_vec())
            .map_err(|_| ApiError::internal("key manager credential is not text"))?;
        let bad = |e: ExternalError| ApiError::bad_request("invalid_key_manager", e.to_string());
        match row.kind.as_str() {
            "kmip" => {
                let ep: KmipEndpoint = serde_json::from_str(&row.config)
                    .map_err(|e| ApiError::internal(format!("key manager settings: {e}")))?;
                kmip::KmipClient::new(kmip::KmipConfig {
                    host: ep.host,
                    port: ep.port,
                    server_name: ep.server_name,
                    ca_pem: ep.ca_pem,
                    client_cert_pem: ep.client_cert_pem,
                    client_key_pem: secret,
                    timeout: self.0.cfg.external_timeout,
                })
                .map(ExternalClient::Kmip)
                .map_err(bad)
            }
            _ => {
                let ep: TransitEndpoint = serde_json::from_str(&row.config)
                    .map_err(|e| ApiError::internal(format!("key manager settings: {e}")))?;
                transit::TransitClient::new(transit::TransitConfig {
                    address: ep.address,
                    token: secret,
                    mount: ep.mount,
                    ca_pem: ep.ca_pem,
                    timeout: self.0.cfg.external_timeout,
                })
                .map(ExternalClient::Transit)
                .map_err(bad)
            }
        }
    }

    async fn manager_client(&self, manager_id: &str) -> ApiResult<(String, ExternalClient)> {
        if let Some(c) = self.0.managers.get(&manager_id.to_string()) {
            return Ok(c);
        }
        let row = self
            .0
            .store
            .kms_manager_by_id(manager_id)
            .await?
            .ok_or_else(|| ApiError::internal("a key refers to a missing key manager"))?;
        let client = (row.name.clone(), self.client_for(&row)?);
        self.0.managers.put(manager_id.to_string(), client.clone());
        Ok(client)
    }

    // ---- keys -----------------------------------------------------------------

    /// The project key [`DEFAULT_KEY`] that encrypts new buckets, volumes
    /// and images, created on first use.
    pub async fn default_key(&self, project: &nuage_core::model::Project) -> ApiResult<KeyRow> {
        if let Some(k) = self.0.store.kms_key_get(&project.id, DEFAULT_KEY).await? {
            return Ok(k);
        }
        match self
            .key_create(
                &project.org_id,
                &project.id,
                DEFAULT_KEY,
                "objects and volumes",
                None,
                &None,
            )
            .await
        {
            Ok(k) => Ok(k),
            // Another request created it first.
            Err(e) if e.code == "already_exists" => self
                .0
                .store
                .kms_key_get(&project.id, DEFAULT_KEY)
                .await?
                .ok_or_else(|| ApiError::internal("the default key vanished")),
            Err(e) => Err(e),
        }
    }

    /// Creates a project key: fresh material wrapped by the root key, or a
    /// reference to a key on an external manager (checked by a test wrap).
    pub async fn key_create(
        &self,
        org_id: &str,
        project_id: &str,
        name: &str,
        description: &str,
        external: Option<(&ManagerRow, &str)>,
        justifications: &Option<Vec<Justification>>,
    ) -> ApiResult<KeyRow> {
        let u = self.unsealed()?;
        let now = now_ms();
        let id = new_id(Kind::Key);
        let version = match external {
            None => KeyVersionRow {
                key_id: id.clone(),
                version: 1,
                state: "enabled".into(),
                material: Some(B64.encode(aead::wrap_key(
                    &u.root,
                    &kek_aad(&id, 1),
                    &SecretKey::generate(),
                ))),
                external_ref: None,
                created_at: now,
                destroyed_at: None,
            },
            Some((m, key_ref)) => {
                self.check_external(m, key_ref).await?;
                external_version(&id, 1, key_ref, now)
            }
        };
        let row = KeyRow {
            id: id.clone(),
            org_id: org_id.to_string(),
            project_id: project_id.to_string(),
            name: name.to_string(),
            description: description.to_string(),
            manager_id: external.map(|(m, _)| m.id.clone()),
            state: "enabled".into(),
            primary_version: 1,
            justifications: justifications_text(justifications),
            destroy_at: None,
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        self.0.store.kms_key_create(&row, &version).await?;
        Ok(row)
    }

    async fn check_external(&self, m: &ManagerRow, key_ref: &str) -> ApiResult<()> {
        if key_ref.is_empty() || key_ref.len() > 256 {
            return Err(ApiError::bad_request(
                "invalid_external_key",
                "the external key id must have 1 to 256 characters",
            ));
        }
        let client = self.client_for(m)?;
        let probe = client
            .encrypt(key_ref, b"nuage key check")
            .await
            .map_err(|e| manager_error(&m.name, key_ref, e))?;
        client
            .decrypt(key_ref, &probe)
            .await
            .map_err(|e| manager_error(&m.name, key_ref, e))?;
        Ok(())
    }

    /// The API view of a key.
    pub async fn key_view(&self, k: &KeyRow) -> ApiResult<Key> {
        let versions = self.0.store.kms_key_versions(&k.id).await?;
        let manager = match &k.manager_id {
            Some(id) => self
                .0
                .store
                .kms_manager_by_id(id)
                .await?
                .map(|m| m.name)
                .or_else(|| Some(id.clone())),
            None => None,
        };
        Ok(Key {
            id: k.id.clone(),
            org_id: k.org_id.clone(),
            project_id: k.project_id.clone(),
            name: k.name.clone(),
            description: k.description.clone(),
            manager,
            state: state_of(k),
            primary_version: k.primary_version,
            allowed_justifications: justifications_of(k),
            destroy_at: k.destroy_at,
            versions: versions
                .into_iter()
                .map(|v| KeyVersion {
                    version: v.version,
                    state: KeyState::parse(&v.state).unwrap_or(KeyState::Enabled),
                    external_key_id: v.external_ref,
                    created_at: v.created_at,
                })
                .collect(),
            generation: k.generation,
            created_at: k.created_at,
            updated_at: k.updated_at,
        })
    }

    /// Adds a version and makes it primary. Old versions still decrypt.
    pub async fn key_rotate(
        &self,
        k: &KeyRow,
        expected: Option<i64>,
        external_key_id: Option<&str>,
    ) -> ApiResult<KeyRow> {
        let u = self.unsealed()?;
        if state_of(k) == KeyState::Destroyed {
            return Err(key_unusable(k));
        }
        let now = now_ms();
        let version = k.primary_version + 1;
        let row = match (&k.manager_id, external_key_id) {
            (None, None) => KeyVersionRow {
                key_id: k.id.clone(),
                version,
                state: "enabled".into(),
                material: Some(B64.encode(aead::wrap_key(
                    &u.root,
                    &kek_aad(&k.id, version),
                    &SecretKey::generate(),
                ))),
                external_ref: None,
                created_at: now,
                destroyed_at: None,
            },
            (Some(mid), Some(r)) => {
                let m =
                    self.0.store.kms_manager_by_id(mid).await?.ok_or_else(|| {
                        ApiError::internal("a key refers to a missing key manager")
                    })?;
                self.check_external(&m, r).await?;
                external_version(&k.id, version, r, now)
            }
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_rotation",
                    "external_key_id is only for keys held by an external key manager",
                ))
            }
            (Some(_), None) => {
                return Err(ApiError::bad_request(
                    "invalid_rotation",
                    "an external key rotates to a new key on its manager: give external_key_id",
                ))
            }
        };
        let updated = self
            .0
            .store
            .kms_key_update(&k.id, expected, Some(&row), |_| Ok(()))
            .await?;
        self.forget_key(&k.id);
        Ok(updated)
    }

    /// Changes state or settings; drops what this process caches of the key.
    pub async fn key_update(
        &self,
        id: &str,
        expected: Option<i64>,
        apply: impl FnOnce(&mut KeyRow) -> ApiResult<()>,
    ) -> ApiResult<KeyRow> {
        let k = self
            .0
            .store
            .kms_key_update(id, expected, None, apply)
            .await?;
        self.forget_key(id);
        Ok(k)
    }

    /// Crypto-shredding: the key's material and every data key wrapped by
    /// it are gone; what they protected can no longer be decrypted.
    pub async fn key_destroy(&self, id: &str) -> ApiResult<KeyRow> {
        let k = self.0.store.kms_key_destroy(id).await?;
        self.forget_key(id);
        Ok(k)
    }

    /// Destroys the keys whose waiting period ended before `now`.
    pub async fn destroy_due(&self, now: i64) -> ApiResult<Vec<KeyRow>> {
        let mut done = Vec::new();
        for k in self.0.store.kms_keys_due(now, 100).await? {
            done.push(self.key_destroy(&k.id).await?);
        }
        Ok(done)
    }

    fn forget_key(&self, key_id: &str) {
        self.0.keys.remove_where(|k, _| k == key_id);
        self.0.keks.remove_where(|(k, _), _| k == key_id);
        self.0.deks.remove_where(|_, d| d.key_id == key_id);
    }

    async fn key_row(&self, key_id: &str) -> ApiResult<Arc<KeyRow>> {
        if let Some(k) = self.0.keys.get(&key_id.to_string()) {
            return Ok(k);
        }
        let k = Arc::new(
            self.0
                .store
                .kms_key_by_id(key_id)
                .await?
                .ok_or_else(|| ApiError::not_found("key", key_id))?,
        );
        self.0.keys.put(key_id.to_string(), k.clone());
        Ok(k)
    }

    /// Refuses a use the key does not allow now.
    pub fn check_use(k: &KeyRow, why: &Purpose) -> ApiResult<()> {
        if state_of(k) != KeyState::Enabled {
            return Err(key_unusable(k));
        }
        if let Some(allowed) = justifications_of(k) {
            if !allowed.contains(&why.justification) {
                return Err(ApiError::forbidden(format!(
                    "key {:?} does not accept the purpose {}",
                    k.name,
                    why.justification.as_str()
                ))
                .with_code("justification_denied"));
            }
        }
        Ok(())
    }

    async fn kek(&self, key_id: &str, version: i64) -> ApiResult<SecretKey> {
        let ck = (key_id.to_string(), version);
        if let Some(k) = self.0.keks.get(&ck) {
            return Ok(k);
        }
        let u = self.unsealed()?;
        let v = self
            .0
            .store
            .kms_key_version(key_id, version)
            .await?
            .ok_or_else(|| ApiError::not_found("key version", &version.to_string()))?;
        let material = v.material.ok_or_else(|| {
            ApiError::conflict(
                "key_destroyed",
                format!("version {version} of key {key_id} is destroyed"),
            )
        })?;
        let raw = B64
            .decode(material)
            .map_err(|_| ApiError::internal("stored key material is not base64"))?;
        let kek = aead::unwrap_key(&u.root, &kek_aad(key_id, version), &raw)
            .map_err(|_| ApiError::internal("stored key material does not open"))?;
        self.0.keks.put(ck, kek.clone());
        Ok(kek)
    }

    async fn wrap_with(
        &self,
        k: &KeyRow,
        version: i64,
        aad: &[u8],
        dek: &SecretKey,
    ) -> ApiResult<Vec<u8>> {
        match &k.manager_id {
            None => Ok(aead::wrap_key(&self.kek(&k.id, version).await?, aad, dek)),
            Some(mid) => {
                let (mname, client) = self.manager_client(mid).await?;
                let key_ref = self.external_ref(&k.id, version).await?;
                let mut pt = Zeroizing::new(Vec::with_capacity(64));
                pt.extend_from_slice(dek.expose());
                pt.extend_from_slice(&Sha256::digest(aad));
                client
                    .encrypt(&key_ref, &pt)
                    .await
                    .map_err(|e| manager_error(&mname, &key_ref, e))
            }
        }
    }

    async fn unwrap_with(
        &self,
        k: &KeyRow,
        version: i64,
        aad: &[u8],
        wrapped: &[u8],
    ) -> ApiResult<SecretKey> {
        let mismatch = || {
            ApiError::conflict(
                "data_key_mismatch",
                format!(
                    "a data key does not unwrap under key {:?} version {version}: it belongs to \
                     another owner or was altered",
                    k.name
                ),
            )
        };
        match &k.manager_id {
            None => aead::unwrap_key(&self.kek(&k.id, version).await?, aad, wrapped)
                .map_err(|_| mismatch()),
            Some(mid) => {
                let (mname, client) = self.manager_client(mid).await?;
                let key_ref = self.external_ref(&k.id, version).await?;
                let pt = client
                    .decrypt(&key_ref, wrapped)
                    .await
                    .map_err(|e| manager_error(&mname, &key_ref, e))?;
                if pt.len() != 64 || !bool::from(pt[32..].ct_eq(&Sha256::digest(aad))) {
                    return Err(mismatch());
                }
                SecretKey::from_slice(&pt[..32]).ok_or_else(mismatch)
            }
        }
    }

    async fn external_ref(&self, key_id: &str, version: i64) -> ApiResult<String> {
        self.0
            .store
            .kms_key_version(key_id, version)
            .await?
            .and_then(|v| v.external_ref)
            .ok_or_else(|| ApiError::internal("an external key version lacks its reference"))
    }

    // ---- data keys --------------------------------------------------------------

    /// A fresh data key for `owner` (a resource of the key's project), wrapped
    /// by the key's primary version and stored; the caller keeps `id`.
    pub async fn data_key(
        &self,
        project_id: &str,
        key: &str,
        owner: &str,
        why: &Purpose,
    ) -> ApiResult<(DataKey, KeyUse)> {
        let (dk, used, row) = self.data_key_unsaved(project_id, key, owner, why).await?;
        self.0.store.kms_data_key_insert(&row).await?;
        Ok((dk, used))
    }

    /// [`Kms::data_key`] without the store write: the caller inserts `row` in
    /// the same transaction as the record that references it, so a failed
    /// or crashed write leaves no orphan key row (and one commit, not two).
    pub async fn data_key_unsaved(
        &self,
        project_id: &str,
        key: &str,
        owner: &str,
        why: &Purpose,
    ) -> ApiResult<(DataKey, KeyUse, DataKeyRow)> {
        self.data_key_unsaved_from(project_id, key, owner, why, SecretKey::generate())
            .await
    }

    /// [`Kms::data_key_unsaved`] for a fresh random key the caller drew
    /// before it knew the project (a spare disk made ahead of need is
    /// already encrypted with it). The key must never have been used for
    /// anything else.
    pub async fn data_key_unsaved_from(
        &self,
        project_id: &str,
        key: &str,
        owner: &str,
        why: &Purpose,
        dek: SecretKey,
    ) -> ApiResult<(DataKey, KeyUse, DataKeyRow)> {
        let k = self.project_key(project_id, key).await?;
        Self::check_use(&k, why)?;
        let id = new_id(Kind::DataKey);
        let version = k.primary_version;
        let wrapped = self
            .wrap_with(&k, version, &dek_aad(&k.id, version, &id, owner), &dek)
            .await?;
        let row = DataKeyRow {
            id: id.clone(),
            key_id: k.id.clone(),
            key_version: version,
            owner: owner.to_string(),
            wrapped: B64.encode(wrapped),
            created_at: now_ms(),
        };
        self.0.deks.put(
            id.clone(),
            CachedDek {
                key: dek.clone(),
                key_id: k.id.clone(),
                version,
                owner: owner.to_string(),
            },
        );
        let used = use_of(&k.id, version, "generate_data_key", why, Some(&id));
        Ok((
            DataKey {
                id,
                key: dek,
                key_version: version,
            },
            used,
            row,
        ))
    }

    /// The data key `id` of `owner` in `project_id`, from the cache when warm.
    pub async fn unwrap(
        &self,
        project_id: &str,
        id: &str,
        owner: &str,
        why: &Purpose,
    ) -> ApiResult<(SecretKey, KeyUse)> {
        if let Some(c) = self.0.deks.get(&id.to_string()) {
            if c.owner == owner {
                let k = self.key_row(&c.key_id).await?;
                if k.project_id == project_id {
                    Self::check_use(&k, why)?;
                    let used = use_of(&k.id, c.version, "unwrap_data_key", why, Some(id));
                    return Ok((c.key, used));
                }
            }
        }
        let missing = || ApiError::not_found("data key", id);
        let d = self
            .0
            .store
            .kms_data_key_get(id)
            .await?
            .ok_or_else(missing)?;
        let k = self.key_row(&d.key_id).await?;
        if k.project_id != project_id || d.owner != owner {
            return Err(missing());
        }
        Self::check_use(&k, why)?;
        let wrapped = B64
            .decode(&d.wrapped)
            .map_err(|_| ApiError::internal("a stored data key is not base64"))?;
        let dek = self
            .unwrap_with(
                &k,
                d.key_version,
                &dek_aad(&k.id, d.key_version, id, owner),
                &wrapped,
            )
            .await?;
        self.0.deks.put(
            id.to_string(),
            CachedDek {
                key: dek.clone(),
                key_id: k.id.clone(),
                version: d.key_version,
                owner: owner.to_string(),
            },
        );
        Ok((
            dek,
            use_of(&k.id, d.key_version, "unwrap_data_key", why, Some(id)),
        ))
    }

    /// Forgets a data key (its resource was deleted): the data it protected
    /// is unreadable from then on.
    pub async fn data_key_delete(&self, id: &str) -> ApiResult<()> {
        self.0.deks.remove_where(|k, _| k == id);
        self.0.store.kms_data_key_delete(id).await
    }

    /// The key `key` (name or id) of `project_id`. Asked by id — as every
    /// object PUT asks for its bucket's key — it comes from the same cache
    /// as [`Kms::unwrap`]'s: this process's own changes to the key drop it
    /// at once, another server's are seen within the cache's lifetime.
    async fn project_key(&self, project_id: &str, key: &str) -> ApiResult<Arc<KeyRow>> {
        if let Some(k) = self.0.keys.get(&key.to_string()) {
            if k.project_id == project_id {
                return Ok(k);
            }
        }
        let k = Arc::new(
            self.0
                .store
                .kms_key_get(project_id, key)
                .await?
                .ok_or_else(|| ApiError::not_found("key", key))?,
        );
        self.0.keys.put(k.id.clone(), k.clone());
        Ok(k)
    }

    /// Encrypts a small secret for `owner` with a data key of its own:
    /// `NKS1 ‖ len ‖ data-key id ‖ wrap(data key, owner, plaintext)`.
    pub async fn seal(
        &self,
        project_id: &str,
        key: &str,
        owner: &str,
        plaintext: &[u8],
        why: &Purpose,
    ) -> ApiResult<(Vec<u8>, KeyUse)> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(too_large());
        }
        let (dk, used) = self.data_key(project_id, key, owner, why).await?;
        let mut out = Vec::with_capacity(plaintext.len() + 96);
        out.extend_from_slice(SEALED_MAGIC);
        out.push(dk.id.len() as u8);
        out.extend_from_slice(dk.id.as_bytes());
        out.extend_from_slice(&aead::wrap(&dk.key, owner.as_bytes(), plaintext));
        Ok((out, used))
    }

    pub async fn open(
        &self,
        project_id: &str,
        owner: &str,
        sealed: &[u8],
        why: &Purpose,
    ) -> ApiResult<(Zeroizing<Vec<u8>>, KeyUse)> {
        let (id, body) = parse_sealed(sealed).ok_or_else(|| {
            ApiError::bad_request("invalid_ciphertext", "not a nuage sealed secret")
        })?;
        let (dek, used) = self.unwrap(project_id, id, owner, why).await?;
        let pt = aead::unwrap(&dek, owner.as_bytes(), body).map_err(|_| {
            ApiError::conflict(
                "decrypt_failed",
                "the sealed secret does not open: altered, or sealed for another owner",
            )
        })?;
        Ok((pt, used))
    }

    // ---- the tenant envelope (encrypt / decrypt endpoints) ------------------

    /// The self-contained envelope of the encrypt endpoint:
    /// `NKE1 ‖ u16 len ‖ key id ‖ u32 version ‖ u16 len ‖ wrapped data key ‖
    /// wrap(data key, aad, plaintext)`, every integer big-endian.
    pub async fn encrypt(
        &self,
        k: &KeyRow,
        aad: &[u8],
        plaintext: &[u8],
        why: &Purpose,
    ) -> ApiResult<(Vec<u8>, KeyUse)> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(too_large());
        }
        Self::check_use(k, why)?;
        let version = k.primary_version;
        let dek = SecretKey::generate();
        let wrapped = self
            .wrap_with(k, version, &envelope_aad(&k.id, version), &dek)
            .await?;
        let wrapped_len = u16::try_from(wrapped.len())
            .map_err(|_| ApiError::internal("wrapped data key too long"))?;
        let mut out = Vec::with_capacity(plaintext.len() + wrapped.len() + 128);
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.extend_from_slice(&(k.id.len() as u16).to_be_bytes());
        out.extend_from_slice(k.id.as_bytes());
        out.extend_from_slice(&(version as u32).to_be_bytes());
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&aead::wrap(&dek, aad, plaintext));
        Ok((out, use_of(&k.id, version, "encrypt", why, None)))
    }

    pub async fn decrypt(
        &self,
        k: &KeyRow,
        aad: &[u8],
        envelope: &[u8],
        why: &Purpose,
    ) -> ApiResult<(Zeroizing<Vec<u8>>, KeyUse)> {
        let bad = |d: &str| ApiError::bad_request("invalid_ciphertext", d.to_string());
        let e = parse_envelope(envelope).map_err(bad)?;
        if e.key_id != k.id {
            return Err(bad("this ciphertext was made with another key"));
        }
        let version = i64::from(e.version);
        let wrapped = e.wrapped;
        Self::check_use(k, why)?;
        if version < 1 || version > k.primary_version {
            return Err(bad("the envelope names a key version that does not exist"));
        }
        let dek = self
            .unwrap_with(k, version, &envelope_aad(&k.id, version), wrapped)
            .await?;
        let pt = aead::unwrap(&dek, aad, e.sealed).map_err(|_| {
            ApiError::bad_request(
                "decrypt_failed",
                "the ciphertext does not decrypt: altered, or other associated data",
            )
        })?;
        Ok((pt, use_of(&k.id, version, "decrypt", why, None)))
    }

    // ---- rewrap -----------------------------------------------------------------

    /// Re-wraps up to `limit` data keys still under an older version with the
    /// primary version, without touching the data they protect.
    pub async fn rewrap(&self, k: &KeyRow, limit: u32) -> ApiResult<(u64, u64, Vec<KeyUse>)> {
        let why = Purpose::new(Justification::Rewrap);
        Self::check_use(k, &why)?;
        let mut done = 0u64;
        let mut uses = Vec::new();
        for d in self
            .0
            .store
            .kms_data_keys_stale(&k.id, k.primary_version, i64::from(limit))
            .await?
        {
            let wrapped = B64
                .decode(&d.wrapped)
                .map_err(|_| ApiError::internal("a stored data key is not base64"))?;
            let dek = self
                .unwrap_with(
                    k,
                    d.key_version,
                    &dek_aad(&k.id, d.key_version, &d.id, &d.owner),
                    &wrapped,
                )
                .await?;
            let new = self
                .wrap_with(
                    k,
                    k.primary_version,
                    &dek_aad(&k.id, k.primary_version, &d.id, &d.owner),
                    &dek,
                )
                .await?;
            if self
                .0
                .store
                .kms_data_key_rewrap(&d.id, d.key_version, k.primary_version, &B64.encode(new))
                .await?
            {
                done += 1;
                uses.push(use_of(
                    &k.id,
                    k.primary_version,
                    "rewrap",
                    &why,
                    Some(&d.id),
                ));
            }
        }
        let remaining = self
            .0
            .store
            .kms_data_keys_count_stale(&k.id, k.primary_version)
            .await?;
        Ok((done, remaining, uses))
    }
}

fn envelope_aad(key_id: &str, version: i64) -> Vec<u8> {
    format!("nuage envelope v1|{key_id}|{version}").into_bytes()
}

fn external_version(key_id: &str, version: i64, key_ref: &str, now: i64) -> KeyVersionRow {
    KeyVersionRow {
        key_id: key_id.to_string(),
        version,
        state: "enabled".into(),
        material: None,
        external_ref: Some(key_ref.to_string()),
        created_at: now,
        destroyed_at: None,
    }
}

fn use_of(
    key_id: &str,
    version: i64,
    operation: &'static str,
    why: &Purpose,
    data_key: Option<&str>,
) -> KeyUse {
    KeyUse {
        key_id: key_id.to_string(),
        key_version: version,
        operation,
        justification: why.justification,
        on_behalf_of: why.principal.clone(),
        data_key: data_key.map(str::to_string),
    }
}

fn key_unusable(k: &KeyRow) -> ApiError {
    let (code, what) = match state_of(k) {
        KeyState::Disabled => ("key_disabled", "is disabled"),
        KeyState::DestroyScheduled => ("key_destroy_scheduled", "is scheduled for destruction"),
        KeyState::Destroyed => ("key_destroyed", "is destroyed"),
        KeyState::Enabled => ("key_unusable", "cannot be used"),
    };
    ApiError::conflict(code, format!("key {:?} {what}", k.name))
}

fn too_large() -> ApiError {
    ApiError::new(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("at most {MAX_PLAINTEXT} bytes of plaintext"),
    )
}

/// The fields of a tenant envelope (see [`Kms::encrypt`]), borrowed from it.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct EnvelopeParts<'a> {
    pub key_id: &'a str,
    pub version: u32,
    pub wrapped: &'a [u8],
    pub sealed: &'a [u8],
}

/// Splits a tenant envelope, or says why the bytes are not one. Public
/// (hidden) for the fuzz target: these bytes come from the caller.
#[doc(hidden)]
pub fn parse_envelope(envelope: &[u8]) -> Result<EnvelopeParts<'_>, &'static str> {
    const TRUNCATED: &str = "truncated envelope";
    let mut r = Reader(envelope);
    if r.take(4) != Some(ENVELOPE_MAGIC.as_slice()) {
        return Err("not a nuage envelope (magic NKE1 missing)");
    }
    let id_len = r.u16().ok_or(TRUNCATED)?;
    let key_id = r
        .take(usize::from(id_len))
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(TRUNCATED)?;
    let version = r.u32().ok_or(TRUNCATED)?;
    let wrapped_len = r.u16().ok_or(TRUNCATED)?;
    let wrapped = r.take(usize::from(wrapped_len)).ok_or(TRUNCATED)?;
    Ok(EnvelopeParts {
        key_id,
        version,
        wrapped,
        sealed: r.0,
    })
}

/// Splits a sealed secret (see [`Kms::seal`]) into its data key id and
/// wrapped body. Public (hidden) for the fuzz target.
#[doc(hidden)]
pub fn parse_sealed(sealed: &[u8]) -> Option<(&str, &[u8])> {
    let rest = sealed.strip_prefix(SEALED_MAGIC.as_slice())?;
    let (&n, rest) = rest.split_first()?;
    if rest.len() < usize::from(n) {
        return None;
    }
    let (id, body) = rest.split_at(usize::from(n));
    Some((std::str::from_utf8(id).ok()?, body))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_into_their_fields_or_say_why_not() {
        let mut e = b"NKE1\x00\x03key\x00\x00\x00\x02\x00\x02wwsealed".to_vec();
        assert_eq!(
            parse_envelope(&e),
            Ok(EnvelopeParts {
                key_id: "key",
                version: 2,
                wrapped: b"ww",
                sealed: b"sealed",
            })
        );
        e.truncate(14);
        assert_eq!(parse_envelope(&e), Err("truncated envelope"));
        assert!(parse_envelope(b"NKE2").is_err());
        assert!(parse_envelope(b"NKE1\x00\x02\xff\xfe\x00\x00\x00\x01\x00\x00").is_err());
    }

    #[test]
    fn sealed_secrets_split_into_key_id_and_body() {
        assert_eq!(parse_sealed(b"NKS1\x02idbody"), Some(("id", &b"body"[..])));
        assert_eq!(parse_sealed(b"NKS1\x09id"), None);
        assert_eq!(parse_sealed(b"NKS1"), None);
        assert_eq!(parse_sealed(b"NKE1\x00"), None);
    }
}
