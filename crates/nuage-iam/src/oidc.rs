//! OIDC federation: an organization's users log in through their company
//! directory with the authorization-code flow and PKCE. nuage is the
//! (confidential) relying party: it keeps the PKCE verifier and nonce of a
//! pending login, exchanges the code with its client secret, and verifies
//! the ID token (signature against the provider's JWKS, issuer, audience,
//! expiry, nonce) with the `openidconnect` crate. Claims then name the user
//! and, through the organization's mapping, its groups.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nuage_core::model::OidcConfig;
use nuage_core::{ApiError, ApiResult};
use nuage_store::PendingLogin;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde_json::Value;

/// Pending logins older than this are refused.
pub const LOGIN_TTL_MS: i64 = 10 * 60 * 1000;

/// Who the provider says logged in.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `<issuer>#<sub>`: stable link between the provider's user and ours.
    pub external_id: String,
    /// A valid nuage user name derived from the username claim.
    pub username: String,
    pub email: String,
    pub display_name: String,
    /// Values of the groups claim.
    pub groups: BTreeSet<String>,
    /// The provider reports a multi-factor authentication (`amr`).
    pub mfa: bool,
}

fn provider_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_GATEWAY,
        "identity_provider_error",
        format!("identity provider: {what}: {e}"),
    )
}

fn http_client() -> ApiResult<openidconnect::reqwest::Client> {
    openidconnect::reqwest::Client::builder()
        // Following redirects would let a provider bounce us anywhere (SSRF).
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| ApiError::internal(format!("HTTP client: {e}")))
}

async fn metadata(
    issuer: &str,
    http: &openidconnect::reqwest::Client,
) -> ApiResult<CoreProviderMetadata> {
    let url = IssuerUrl::new(issuer.to_string())
        .map_err(|e| ApiError::bad_request("invalid_issuer", e.to_string()))?;
    CoreProviderMetadata::discover_async(url, http)
        .await
        .map_err(|e| provider_err("discovery failed", e))
}

/// Checks a redirect URI: loopback HTTP (native clients, RFC 8252) or HTTPS.
pub fn check_redirect_uri(uri: &str) -> ApiResult<()> {
    use openidconnect::url::{Host, Url};
    let bad = || {
        ApiError::bad_request(
            "invalid_redirect_uri",
            "redirect_uri must be https:// or a loopback http://127.0.0.1:<port>/… address",
        )
    };
    let url = Url::parse(uri).map_err(|_| bad())?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad());
    }
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(bad()),
    }
}

/// Begins a login: the URL to send the browser to, and the pending state to keep.
pub async fn start(
    org_id: &str,
    cfg: &OidcConfig,
    secret: &str,
    redirect_uri: &str,
    now_ms: i64,
) -> ApiResult<(String, PendingLogin)> {
    check_redirect_uri(redirect_uri)?;
    let http = http_client()?;
    let meta = metadata(&cfg.issuer, &http).await?;
    let redirect = RedirectUrl::new(redirect_uri.to_string())
        .map_err(|e| ApiError::bad_request("invalid_redirect_uri", e.to_string()))?;
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(cfg.client_id.clone()),
        Some(ClientSecret::new(secret.to_string())),
    )
    .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".to_string()))
        .add_scope(Scope::new("profile".to_string()));
    if !cfg.groups_claim.is_empty() {
        req = req.add_scope(Scope::new(cfg.groups_claim.clone()));
    }
    let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
    Ok((
        url.to_string(),
        PendingLogin {
            state: state.secret().clone(),
            org_id: org_id.to_string(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            redirect_uri: redirect_uri.to_string(),
            created_at: now_ms,
        },
    ))
}

/// Finishes a login: exchanges the code and verifies the ID token.
pub async fn finish(
    cfg: &OidcConfig,
    secret: &str,
    pending: &PendingLogin,
    code: &str,
) -> ApiResult<Identity> {
    let http = http_client()?;
    let meta = metadata(&cfg.issuer, &http).await?;
    let redirect = RedirectUrl::new(pending.redirect_uri.clone())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(cfg.client_id.clone()),
        Some(ClientSecret::new(secret.to_string())),
    )
    .set_redirect_uri(redirect);
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .map_err(|e| provider_err("no token endpoint", e))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
        .request_async(&http)
        .await
        .map_err(|e| {
            ApiError::unauthenticated(format!("the identity provider refused the code: {e}"))
        })?;
    let id_token = token
        .id_token()
        .ok_or_else(|| provider_err("no ID token in the answer", "missing id_token"))?;
    let claims = id_token
        .claims(
            &client.id_token_verifier(),
            &Nonce::new(pending.nonce.clone()),
        )
        .map_err(|e| ApiError::unauthenticated(format!("ID token rejected: {e}")))?;
    // The token is verified; read its claims as JSON to reach the
    // configured username and groups claims, whatever their names.
    let jwt = id_token.to_string();
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or_else(|| provider_err("unreadable ID token", "bad payload"))?;
    let subject = claims.subject().as_str().to_string();
    let raw_name = match cfg.username_claim.as_str() {
        "sub" => Some(subject.clone()),
        c => payload.get(c).and_then(Value::as_str).map(str::to_string),
    }
    .ok_or_else(|| {
        ApiError::unauthenticated(format!(
            "the ID token has no {:?} claim to name the user",
            cfg.username_claim
        ))
    })?;
    let groups = match payload.get(&cfg.groups_claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => BTreeSet::from([s.clone()]),
        _ => BTreeSet::new(),
    };
    let mfa = payload
        .get("amr")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|v| matches!(v.as_str(), Some("mfa" | "otp" | "hwk" | "swk")))
        });
    Ok(Identity {
        external_id: format!("{}#{}", cfg.issuer, subject),
        username: user_name(&raw_name)?,
        email: payload
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        display_name: payload
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        groups,
        mfa,
    })
}

/// Turns a provider's user name (`Alice.Martin@corp.eu`) into a DNS-label
/// user name (`alice-martin`): the local part of an e-mail, lowercased,
/// other characters replaced by `-`.
pub fn user_name(raw: &str) -> ApiResult<String> {
    let local = raw.split('@').next().unwrap_or(raw);
    let mut name: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let mut name = name.trim_matches('-').to_string();
    if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        name = format!("u-{name}");
    }
    name.truncate(nuage_core::name::MAX_LEN);
    let name = name.trim_end_matches('-').to_string();
    nuage_core::name::validate("user", &name).map_err(|_| {
        ApiError::unauthenticated(format!("cannot derive a user name from {raw:?}"))
    })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_become_dns_labels() {
        assert_eq!(user_name("Alice.Martin@corp.eu").unwrap(), "alice-martin");
        assert_eq!(user_name("bob").unwrap(), "bob");
        assert_eq!(user_name("42x").unwrap(), "u-42x");
        assert_eq!(user_name("__jo__").unwrap(), "jo");
        assert!(user_name("@@@").is_err());
    }

    #[test]
    fn redirect_uris_are_loopback_or_https() {
        assert!(check_redirect_uri("http://127.0.0.1:4567/callback").is_ok());
        assert!(check_redirect_uri("https://console.example.eu/cb").is_ok());
        assert!(check_redirect_uri("http://evil.example/cb").is_err());
        assert!(check_redirect_uri("http://127.0.0.1.evil.example/cb").is_err());
        assert!(check_redirect_uri("http://127.0.0.1:1@evil.example/cb").is_err());
        assert!(check_redirect_uri("http://localhost:80@evil.example/").is_err());
    }
}
