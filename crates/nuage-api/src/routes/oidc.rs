//! OIDC federation: an organization registers its identity provider; its
//! users log in through it (authorization code + PKCE) and land in nuage
//! groups according to the provider's group claim.

use axum::extract::State;
use axum::response::Response;
use axum::{Extension, Json};
use http::StatusCode;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{
    OidcAuthorization, OidcConfig, OidcFinish, OidcStart, Principal, PrincipalKind, Session,
    SetOidcConfig,
};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::oidc;

use crate::ctx::{Body, Ctx, Tagged};
use crate::observe::AuditSlot;
use crate::problem::{HandlerResult, Problem};
use crate::routes::auth::{record_login, sensitive};
use crate::state::AppState;

#[utoipa::path(get, path = "/v1/orgs/{org}/oidc", tag = "oidc",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = OidcConfig), (status = 404, body = Problem)))]
pub async fn get_config(ctx: Ctx) -> HandlerResult<Tagged<OidcConfig>> {
    ctx.authorize("oidc.get", &ctx.org_target()?).await?;
    let (cfg, _) = ctx
        .state
        .store
        .oidc_get(&ctx.org()?.id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "identity provider",
                &ctx.org().map(|o| o.name.clone()).unwrap_or_default(),
            )
        })?;
    let g = cfg.generation;
    Ok(Tagged(StatusCode::OK, cfg, g))
}

/// Register (or replace) the organization's identity provider.
#[utoipa::path(put, path = "/v1/orgs/{org}/oidc", tag = "oidc", request_body = SetOidcConfig,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = OidcConfig), (status = 400, body = Problem)))]
pub async fn set_config(
    ctx: Ctx,
    Body(b): Body<SetOidcConfig>,
) -> HandlerResult<Tagged<OidcConfig>> {
    ctx.authorize("oidc.configure", &ctx.org_target()?).await?;
    let org = ctx.org()?.clone();
    let issuer = openidconnect_url(&b.issuer)?;
    if b.client_id.is_empty() || b.client_id.len() > 512 {
        return Err(
            ApiError::bad_request("invalid_client_id", "client_id must be 1 to 512 bytes").into(),
        );
    }
    for group in b.group_mappings.values() {
        name::validate("group", group)?;
    }
    let existing = ctx.state.store.oidc_get(&org.id).await?;
    let secret = match (&b.client_secret, &existing) {
        (Some(s), _) if !s.is_empty() => ctx
            .state
            .kms
            .seal_text(&client_secret_purpose(&org.id), s)?,
        (_, Some((_, s))) => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "missing_client_secret",
                "client_secret is required the first time",
            )
            .into())
        }
    };
    let now = now_ms();
    let cfg = OidcConfig {
        issuer,
        client_id: b.client_id,
        has_client_secret: true,
        username_claim: b
            .username_claim
            .unwrap_or_else(|| "preferred_username".to_string()),
        groups_claim: b.groups_claim.unwrap_or_else(|| "groups".to_string()),
        group_mappings: b.group_mappings,
        generation: existing
            .as_ref()
            .map(|(c, _)| c.generation + 1)
            .unwrap_or(1),
        created_at: existing.as_ref().map(|(c, _)| c.created_at).unwrap_or(now),
        updated_at: now,
    };
    ctx.state.store.oidc_put(&org.id, &cfg, &secret).await?;
    let g = cfg.generation;
    Ok(Tagged(StatusCode::OK, cfg, g))
}

fn openidconnect_url(issuer: &str) -> Result<String, ApiError> {
    let ok = issuer.starts_with("https://")
        || issuer.starts_with("http://127.0.0.1")
        || issuer.starts_with("http://localhost");
    if !ok || issuer.len() > 2048 {
        return Err(ApiError::bad_request(
            "invalid_issuer",
            "issuer must be an https:// URL (plain http only on loopback, for tests)",
        ));
    }
    Ok(issuer.trim_end_matches('/').to_string())
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/oidc", tag = "oidc",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_config(ctx: Ctx) -> HandlerResult<StatusCode> {
    ctx.authorize("oidc.configure", &ctx.org_target()?).await?;
    if !ctx.state.store.oidc_delete(&ctx.org()?.id).await? {
        return Err(ApiError::not_found("identity provider", &ctx.org()?.name).into());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Begin an OIDC login: returns the provider URL to open in a browser.
#[utoipa::path(post, path = "/v1/login/oidc/start", tag = "auth", request_body = OidcStart,
    responses((status = 200, body = OidcAuthorization), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn start(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Body(b): Body<OidcStart>,
) -> HandlerResult<Json<OidcAuthorization>> {
    slot.update(|a| {
        a.action = Some("auth.oidc_start".to_string());
        a.resource = Some(format!("org:{}", b.org));
    });
    let no_provider = || ApiError::not_found("identity provider of organization", &b.org);
    let org = state.store.org_get(&b.org).await?.ok_or_else(no_provider)?;
    slot.update(|a| a.log_id = Some(org.id.clone()));
    let (cfg, secret) = state
        .store
        .oidc_get(&org.id)
        .await?
        .ok_or_else(no_provider)?;
    let secret = state
        .kms
        .open_text(&client_secret_purpose(&org.id), &secret)?;
    let (url, pending) = oidc::start(&org.id, &cfg, &secret, &b.redirect_uri, now_ms()).await?;
    state.store.oidc_login_put(&pending).await?;
    let _ = state
        .store
        .oidc_login_expire(now_ms() - oidc::LOGIN_TTL_MS)
        .await;
    Ok(Json(OidcAuthorization {
        authorization_url: url,
        state: pending.state,
    }))
}

/// Finish an OIDC login with the code the provider sent back.
#[utoipa::path(post, path = "/v1/login/oidc/finish", tag = "auth", request_body = OidcFinish,
    responses((status = 200, body = Session), (status = 401, body = Problem), (status = 502, body = Problem)))]
pub async fn finish(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Body(b): Body<OidcFinish>,
) -> HandlerResult<Response> {
    let unknown = || ApiError::unauthenticated("unknown, used or expired login; start again");
    let pending = state
        .store
        .oidc_login_take(&b.state)
        .await?
        .ok_or_else(unknown)?;
    slot.update(|a| a.log_id = Some(pending.org_id.clone()));
    if now_ms() - pending.created_at > oidc::LOGIN_TTL_MS {
        record_login(&slot, Some(&pending.org_id), "oidc", Err(()));
        return Err(unknown().into());
    }
    let (cfg, secret) = state
        .store
        .oidc_get(&pending.org_id)
        .await?
        .ok_or_else(unknown)?;
    let secret = state
        .kms
        .open_text(&client_secret_purpose(&pending.org_id), &secret)?;
    let identity = match oidc::finish(&cfg, &secret, &pending, &b.code).await {
        Ok(i) => i,
        Err(e) => {
            record_login(&slot, Some(&pending.org_id), "oidc", Err(()));
            return Err(e.into());
        }
    };
    let principal = match state
        .store
        .principal_by_external_id(&pending.org_id, &identity.external_id)
        .await?
    {
        Some(p) => p,
        None => {
            let now = now_ms();
            let p = Principal {
                id: new_id(Kind::User),
                org_id: pending.org_id.clone(),
                kind: PrincipalKind::User,
                name: identity.username.clone(),
                display_name: identity.display_name.clone(),
                email: identity.email.clone(),
                description: format!("federated from {}", cfg.issuer),
                mfa_enabled: false,
                has_password: false,
                locked_until: None,
                generation: 1,
                created_at: now,
                updated_at: now,
            };
            state
                .store
                .principal_create_external(&p, &identity.external_id)
                .await?;
            p
        }
    };
    for (claim_value, group_name) in &cfg.group_mappings {
        let Some(group) = state.store.group_get(&pending.org_id, group_name).await? else {
            tracing::warn!(group = %group_name, "OIDC group mapping names a group that does not exist");
            continue;
        };
        if identity.groups.contains(claim_value) {
            state
                .store
                .group_member_ensure(&group.id, &principal.id)
                .await?;
        } else {
            state
                .store
                .group_member_remove(&group.id, &principal.id)
                .await?;
        }
    }
    let ttl = state.authn.policy().session_ttl.as_secs() as i64;
    let token = state
        .authn
        .issue_token(&principal, "oidc-session", "session", identity.mfa, ttl)
        .await?;
    record_login(
        &slot,
        Some(&pending.org_id),
        &principal.name,
        Ok(&principal),
    );
    slot.update(|a| a.policies = vec!["oidc".to_string()]);
    Ok(sensitive(StatusCode::OK, Session { principal, token }))
}

/// What an organization's OIDC client secret is sealed for.
fn client_secret_purpose(org_id: &str) -> String {
    format!("oidc-client-secret:{org_id}")
}
