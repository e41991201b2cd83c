//! Logging in and managing one's own credentials: password, second factor.
//! The same helpers serve operators on the admin listener.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::StatusCode;
use nuage_core::model::{
    ChangePassword, Login, Principal, PrincipalKind, Session, TotpCode, TotpEnrollment, WhoAmI,
};
use nuage_core::time::now_ms;
use nuage_core::ApiError;
use nuage_iam::{password, totp, Target};

use crate::ctx::{Body, Ctx};
use crate::idempotency::Sensitive;
use crate::observe::AuditSlot;
use crate::problem::{HandlerResult, Problem};
use crate::state::AppState;

/// Marks an answer as holding a secret (never stored for idempotency).
pub fn sensitive<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.extensions_mut().insert(Sensitive);
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

pub(crate) fn record_login(
    slot: &AuditSlot,
    log_id: Option<&str>,
    name: &str,
    result: Result<&Principal, ()>,
) {
    slot.update(|a| {
        a.action = Some("auth.login".to_string());
        a.resource = Some(format!("user:{name}"));
        if let Some(l) = log_id {
            a.log_id = Some(l.to_string());
        }
        match result {
            Ok(p) => {
                a.principal_id = Some(p.id.clone());
                a.principal_name = p.name.clone();
                a.decision = Some("allow");
                a.policies = vec!["password".to_string()];
            }
            Err(()) => {
                a.principal_name = name.to_string();
                a.decision = Some("deny");
            }
        }
    });
}

/// Exchange a user's password (and TOTP code) for a session token.
#[utoipa::path(post, path = "/v1/login", tag = "auth", request_body = Login,
    responses((status = 200, body = Session), (status = 401, body = Problem), (status = 429, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Body(body): Body<Login>,
) -> HandlerResult<Response> {
    let org = state.store.org_get(&body.org).await?;
    let Some(org) = org else {
        record_login(&slot, None, &body.user, Err(()));
        return Err(ApiError::unauthenticated("invalid name, password or second factor").into());
    };
    let result = state
        .authn
        .login(
            &org.id,
            PrincipalKind::User,
            &body.user,
            &body.password,
            body.totp.as_deref(),
        )
        .await;
    match result {
        Ok(session) => {
            record_login(&slot, Some(&org.id), &body.user, Ok(&session.principal));
            Ok(sensitive(StatusCode::OK, session))
        }
        Err(e) => {
            record_login(&slot, Some(&org.id), &body.user, Err(()));
            Err(e.into())
        }
    }
}

pub(crate) fn whoami(ctx: &Ctx) -> WhoAmI {
    ctx.note_action(
        "auth.whoami",
        &format!("principal:{}", ctx.subject.principal.name),
    );
    WhoAmI {
        principal: ctx.subject.principal.clone(),
        token_id: ctx.subject.token_id.clone(),
        mfa: ctx.subject.mfa,
    }
}

/// Who am I: the caller's principal and credential.
#[utoipa::path(get, path = "/v1/me", tag = "auth", responses((status = 200, body = WhoAmI), (status = 401, body = Problem)))]
pub async fn me(ctx: Ctx) -> Json<WhoAmI> {
    Json(whoami(&ctx))
}

async fn authorize_self(ctx: &Ctx, action: &'static str) -> Result<(), ApiError> {
    let p = &ctx.subject.principal;
    if p.kind == PrincipalKind::Operator {
        ctx.allow_operator(action, &format!("operator:{}", p.name));
        return Ok(());
    }
    ctx.authorize(
        action,
        &Target::principal(&p.org_id, p.kind, &p.id, &p.name),
    )
    .await
}

pub(crate) async fn do_change_password(
    ctx: &Ctx,
    body: ChangePassword,
) -> Result<StatusCode, ApiError> {
    authorize_self(ctx, "user.set_password").await?;
    password::check_strength(&body.password)?;
    ctx.state
        .authn
        .check_password(&ctx.subject.principal, &body.current_password)
        .await?;
    let hash = password::hash(&body.password)?;
    ctx.state
        .store
        .principal_set_password(&ctx.subject.principal.id, &hash)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change one's own password (the current one is required).
#[utoipa::path(put, path = "/v1/me/password", tag = "auth", request_body = ChangePassword,
    responses((status = 204), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn change_password(
    ctx: Ctx,
    Body(body): Body<ChangePassword>,
) -> HandlerResult<StatusCode> {
    Ok(do_change_password(&ctx, body).await?)
}

pub(crate) async fn do_enroll(ctx: &Ctx) -> Result<Response, ApiError> {
    authorize_self(ctx, "user.enroll_mfa").await?;
    if ctx.subject.principal.mfa_enabled {
        return Err(ApiError::conflict(
            "mfa_already_enabled",
            "a second factor is already enrolled; ask an administrator to reset it",
        ));
    }
    let secret = totp::new_secret();
    let purpose = nuage_iam::authn::totp_purpose(&ctx.subject.principal.id);
    ctx.state
        .store
        .principal_set_totp_pending(
            &ctx.subject.principal.id,
            &ctx.state.kms.seal_text(&purpose, &secret)?,
        )
        .await?;
    let url = totp::otpauth_url(&secret, "nuage", &ctx.subject.principal.name);
    Ok(sensitive(
        StatusCode::OK,
        TotpEnrollment {
            secret,
            otpauth_url: url,
        },
    ))
}

/// Start enrolling a TOTP second factor; confirm it with a first code.
#[utoipa::path(post, path = "/v1/me/mfa", tag = "auth",
    responses((status = 200, body = TotpEnrollment), (status = 409, body = Problem)))]
pub async fn enroll_mfa(ctx: Ctx) -> HandlerResult<Response> {
    Ok(do_enroll(&ctx).await?)
}

pub(crate) async fn do_confirm(ctx: &Ctx, code: &str) -> Result<StatusCode, ApiError> {
    authorize_self(ctx, "user.enroll_mfa").await?;
    let p = &ctx.subject.principal;
    let creds = ctx
        .state
        .store
        .principal_credentials(&p.org_id, p.kind, &p.name)
        .await?
        .ok_or_else(|| ApiError::not_found("principal", &p.name))?;
    let Some(pending) = creds.totp_pending else {
        return Err(ApiError::conflict(
            "no_pending_mfa",
            "start an enrolment first (POST …/me/mfa)",
        ));
    };
    let pending = ctx
        .state
        .kms
        .open_text(&nuage_iam::authn::totp_purpose(&p.id), &pending)?;
    if !totp::check(&pending, code, (now_ms() / 1000) as u64)? {
        return Err(ApiError::bad_request(
            "invalid_code",
            "the code does not match; check the device clock",
        ));
    }
    ctx.state.store.principal_confirm_totp(&p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm a TOTP enrolment with a current code.
#[utoipa::path(post, path = "/v1/me/mfa/confirm", tag = "auth", request_body = TotpCode,
    responses((status = 204), (status = 400, body = Problem)))]
pub async fn confirm_mfa(ctx: Ctx, Body(body): Body<TotpCode>) -> HandlerResult<StatusCode> {
    Ok(do_confirm(&ctx, &body.code).await?)
}
