//! API types of the key service: project keys, their versions, the external
//! key managers an organization registers, and the envelope operations.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::time::{rfc3339, rfc3339_opt};

/// Why a key is used. A key may restrict the purposes it accepts, as Key
/// Access Justifications do; every use is audited with its purpose.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Justification {
    /// A tenant's own application calling encrypt/decrypt.
    TenantRequest,
    /// A nuage service (objects, volumes …) acting for a principal.
    ServiceForPrincipal,
    /// Re-wrapping data keys under the newest key version.
    Rewrap,
    Backup,
    /// An operator's emergency access, outside normal procedures.
    OperatorBreakGlass,
}

impl Justification {
    pub const ALL: [Justification; 5] = [
        Justification::TenantRequest,
        Justification::ServiceForPrincipal,
        Justification::Rewrap,
        Justification::Backup,
        Justification::OperatorBreakGlass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Justification::TenantRequest => "tenant_request",
            Justification::ServiceForPrincipal => "service_for_principal",
            Justification::Rewrap => "rewrap",
            Justification::Backup => "backup",
            Justification::OperatorBreakGlass => "operator_break_glass",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|j| j.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Enabled,
    Disabled,
    /// Destruction is scheduled at `destroy_at`; the key is unusable meanwhile
    /// and the schedule can be cancelled.
    DestroyScheduled,
    /// Material gone: nothing it protected can be decrypted again.
    Destroyed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::DestroyScheduled => "destroy_scheduled",
            KeyState::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            KeyState::Enabled,
            KeyState::Disabled,
            KeyState::DestroyScheduled,
            KeyState::Destroyed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A project key-encryption key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Key {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// Name of the external key manager holding the material; absent for
    /// keys whose material nuage holds (wrapped by the platform root key).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub manager: Option<String>,
    pub state: KeyState,
    /// The version new data keys are wrapped with.
    pub primary_version: i64,
    /// Purposes this key accepts; absent means all, empty means none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed_justifications: Option<Vec<Justification>>,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub destroy_at: Option<i64>,
    pub versions: Vec<KeyVersion>,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct KeyVersion {
    pub version: i64,
    /// `enabled` or `destroyed`.
    pub state: KeyState,
    /// The key's identifier on the external manager (KMIP unique id or
    /// Transit key name), for external keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub external_key_id: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Hold the key outside nuage: the manager's name and the key's id on it.
    #[serde(default)]
    pub external: Option<ExternalKeyRef>,
    #[serde(default)]
    pub allowed_justifications: Option<Vec<Justification>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalKeyRef {
    pub manager: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub description: Option<String>,
    /// Replace the accepted purposes; `[]` denies every use.
    pub allowed_justifications: Option<Vec<Justification>>,
    /// Accept every purpose again.
    #[serde(default)]
    pub allow_all_justifications: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// For external keys: the id of the new key on the manager.
    pub external_key_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDestruction {
    /// Waiting period in days (1 to 365, default 7).
    pub days: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewrapRequest {
    /// Data keys to re-wrap in this call (1 to 10000, default 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RewrapProgress {
    pub rewrapped: u64,
    /// Data keys still wrapped by an older version.
    pub remaining: u64,
    pub primary_version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// Base64 plaintext, at most 64 KiB once decoded.
    pub plaintext: String,
    /// Optional base64 associated data; the same must be given to decrypt.
    #[serde(default)]
    pub aad: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncryptResponse {
    /// Base64 envelope (format documented in the README, "Key service").
    pub ciphertext: String,
    pub key_id: String,
    pub key_version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    pub ciphertext: String,
    #[serde(default)]
    pub aad: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecryptResponse {
    pub plaintext: String,
    pub key_version: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyManagerKind {
    Kmip,
    Transit,
}

/// An external key manager registered by an organization. Its credential
/// (client private key or token) is write-only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct KeyManager {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub kind: KeyManagerKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kmip: Option<KmipEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub transit: Option<TransitEndpoint>,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KmipEndpoint {
    pub host: String,
    pub port: u16,
    /// TLS server name when it differs from `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM CA certificate(s) that sign the server's certificate.
    pub ca_pem: String,
    /// PEM client certificate nuage presents.
    pub client_cert_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransitEndpoint {
    /// `https://host:port` (plain `http://` only on loopback).
    pub address: String,
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

fn default_mount() -> String {
    "transit".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyManager {
    pub name: String,
    pub kind: KeyManagerKind,
    #[serde(default)]
    pub kmip: Option<KmipEndpoint>,
    /// PEM private key of the KMIP client certificate (write-only).
    #[serde(default)]
    pub kmip_client_key_pem: Option<String>,
    #[serde(default)]
    pub transit: Option<TransitEndpoint>,
    /// Transit token (write-only).
    #[serde(default)]
    pub transit_token: Option<String>,
}

/// Sealing state of the server, on the admin listener.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SealStatus {
    pub sealed: bool,
    /// `key_file`, `passphrase` or `kmip`.
    pub method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    pub passphrase: String,
}
