//! Public resource types of the control plane, as the API shows them and the
//! store returns them. Request bodies refuse unknown fields so a typo is an
//! error, not a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::time::{rfc3339, rfc3339_opt};

pub mod kms;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub display_name: String,
    /// Roles that count only for sessions that passed a second factor.
    pub mfa_required_roles: Vec<String>,
    /// Most projects this organization may hold (operator-set quota).
    pub max_projects: i64,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Project {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// Kinds of principal. Operators live in their own realm, outside every
/// organization.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServiceAccount,
    Operator,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServiceAccount => "service_account",
            PrincipalKind::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(PrincipalKind::User),
            "service_account" => Some(PrincipalKind::ServiceAccount),
            "operator" => Some(PrincipalKind::Operator),
            _ => None,
        }
    }
}

/// A user, a service account or an operator.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Principal {
    pub id: String,
    /// Empty for operators.
    pub org_id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub description: String,
    /// A TOTP second factor is enrolled.
    pub mfa_enabled: bool,
    /// A password is set (users and operators only).
    pub has_password: bool,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub locked_until: Option<i64>,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Group {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// A principal as other resources refer to it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PrincipalRef {
    pub id: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub principal_id: String,
    /// `api` (long-lived, created explicitly) or `session` (from a login).
    pub kind: String,
    /// The token was issued after a second factor.
    pub mfa: bool,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<i64>,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

/// A token as returned once, at creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenSecret {
    pub token: Token,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RoleBinding {
    pub id: String,
    pub org_id: String,
    /// Absent for organization-wide bindings.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub project_id: Option<String>,
    pub subject: PrincipalRef,
    pub role: String,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub actions: Vec<String>,
    /// This organization requires a second factor for this role.
    pub requires_mfa: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Policy {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: String,
    /// Cedar policy text.
    pub body: String,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

// ---- request bodies -------------------------------------------------------

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerSpec {
    pub name: String,
    #[serde(default)]
    pub email: String,
    /// Initial password of the owner; when absent an API token is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_projects: Option<i64>,
    /// First owner of the organization.
    pub owner: OwnerSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgCreated {
    pub org: Org,
    pub owner: Principal,
    /// An API token of the owner, shown once, when no password was given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner_token: Option<TokenSecret>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_required_roles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgQuota {
    pub max_projects: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePrincipal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// `user:<name>` or `service-account:<name>`, or a principal id.
    pub principal: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// Issue the token to this service account (`service-account:<name>` or an
    /// id) instead of the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Lifetime in seconds (default 90 days, at most 1 year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleBinding {
    /// `user:<name>`, `group:<name>`, `service-account:<name>` or an id.
    pub principal: String,
    pub role: String,
    /// Project name or id; absent for an organization-wide binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub body: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyTest {
    /// `user:<name>`, `service-account:<name>` or an id.
    pub principal: String,
    /// An action such as `project.get`.
    pub action: String,
    /// `org`, or `project:<name>`.
    pub resource: String,
    /// Evaluate as if the session had passed a second factor.
    #[serde(default)]
    pub mfa: bool,
    /// Source address to evaluate with (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct PolicyDecision {
    /// `allow` or `deny`.
    pub decision: String,
    /// Policies that decided (`role:<name>` for built-in roles, `policy:<name>`
    /// for custom ones); empty when nothing permitted (deny by default).
    pub policies: Vec<String>,
    /// Roles the principal holds on that resource in this context.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub org: String,
    pub user: String,
    pub password: String,
    /// Current TOTP code, when the user has a second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperator {
    pub name: String,
    #[serde(default)]
    pub email: String,
    pub password: String,
}

/// A new operator, with the token it enrols its second factor with (shown once).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct OperatorCreated {
    pub operator: Principal,
    pub enrollment_token: TokenSecret,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorLogin {
    pub name: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Session {
    pub principal: Principal,
    pub token: TokenSecret,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TotpEnrollment {
    /// Base32 secret, shown once.
    pub secret: String,
    pub otpauth_url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    pub code: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct WhoAmI {
    pub principal: Principal,
    pub token_id: String,
    pub mfa: bool,
}

// ---- OIDC federation --------------------------------------------------------

/// An organization's identity provider (the client secret is never shown).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct OidcConfig {
    /// Issuer URL; its `/.well-known/openid-configuration` is used.
    pub issuer: String,
    pub client_id: String,
    pub has_client_secret: bool,
    /// ID-token claim that names the user (`preferred_username`, `email`, `sub` …).
    pub username_claim: String,
    /// ID-token claim holding the user's groups at the provider.
    pub groups_claim: String,
    /// Provider group (claim value) → nuage group name.
    pub group_mappings: BTreeMap<String, String>,
    pub generation: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOidcConfig {
    pub issuer: String,
    pub client_id: String,
    /// Required the first time; keeps the stored one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub group_mappings: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcStart {
    pub org: String,
    /// Where the provider sends the browser back: a loopback URL of the CLI
    /// (`http://127.0.0.1:<port>/…`) or an `https://` URL.
    pub redirect_uri: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct OidcAuthorization {
    /// Open this in a browser.
    pub authorization_url: String,
    pub state: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcFinish {
    pub state: String,
    pub code: String,
}

// ---- audit ------------------------------------------------------------------

/// One audit entry: one decision of the API, allowed or denied.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct AuditRecord {
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: i64,
    pub request_id: String,
    /// Principal id, or `anonymous`.
    pub principal: String,
    pub principal_name: String,
    pub source: String,
    pub method: String,
    pub path: String,
    pub action: String,
    pub resource: String,
    /// `allow`, `deny` or `error` (rejected before a decision).
    pub decision: String,
    /// Policies that decided.
    pub policies: Vec<String>,
    pub status: u16,
    /// What else the decision involved, such as the key, key version and
    /// purpose of a key use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuditEntry {
    pub index: i64,
    pub leaf_hash: String,
    /// Absent when retention removed the body (the hash stays in the tree).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record: Option<AuditRecord>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuditCheckpoint {
    pub origin: String,
    pub size: i64,
    /// Base64 root hash.
    pub root_hash: String,
    /// The checkpoint as a C2SP signed note.
    pub note: String,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuditProof {
    pub size: i64,
    /// Hex hashes, as RFC 9162 orders them.
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuditPublicKey {
    /// Signed-note verifier key `<name>+<key id>+<base64 key>`.
    pub verifier_key: String,
}

/// An S3 access key of a principal. The secret is shown once, at creation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AccessKey {
    /// The access key id (what S3 clients call `aws_access_key_id`).
    pub id: String,
    pub org_id: String,
    pub principal_id: String,
    pub description: String,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessKey {
    /// Whose key (`user:<name>`, `service-account:<name>`, an id); the caller's by default.
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// The answer to a creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessKeyCreated {
    pub access_key: AccessKey,
    /// What S3 clients call `aws_secret_access_key`.
    pub secret_access_key: String,
}
