//! Users and service accounts of an organization.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{
    CreateServiceAccount, CreateUser, Principal, PrincipalKind, SetPassword, UpdatePrincipal,
};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::{password, Target};

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::problem::{HandlerResult, Problem};

fn target(p: &Principal) -> Target {
    Target::principal(&p.org_id, p.kind, &p.id, &p.name)
}

fn actions(kind: PrincipalKind) -> [&'static str; 5] {
    match kind {
        PrincipalKind::ServiceAccount => [
            "service_account.list",
            "service_account.get",
            "service_account.create",
            "service_account.update",
            "service_account.delete",
        ],
        _ => [
            "user.list",
            "user.get",
            "user.create",
            "user.update",
            "user.delete",
        ],
    }
}

fn check_text(field: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > 256 || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be at most 256 bytes without control characters"),
        ));
    }
    Ok(())
}

async fn list(
    ctx: &Ctx,
    kind: PrincipalKind,
    page: PageParams,
) -> Result<Page<Principal>, ApiError> {
    ctx.authorize(actions(kind)[0], &ctx.org_target()?).await?;
    ctx.state
        .store
        .principal_list(&ctx.org()?.id, kind, &page.validate()?)
        .await
}

async fn get_one(
    ctx: &Ctx,
    kind: PrincipalKind,
    name: &str,
) -> Result<Tagged<Principal>, ApiError> {
    let p = ctx.principal(kind, name).await?;
    ctx.authorize(actions(kind)[1], &target(&p)).await?;
    let g = p.generation;
    Ok(Tagged(StatusCode::OK, p, g))
}

async fn create(
    ctx: &Ctx,
    kind: PrincipalKind,
    name_: String,
    display_name: String,
    email: String,
    description: String,
    pw: Option<String>,
) -> Result<Tagged<Principal>, ApiError> {
    ctx.authorize(actions(kind)[2], &ctx.org_target()?).await?;
    name::validate(nuage_store::kind_label(kind), &name_)?;
    check_text("display_name", &display_name)?;
    check_text("email", &email)?;
    check_text("description", &description)?;
    let hash = match pw {
        Some(pw) => {
            password::check_strength(&pw)?;
            Some(password::hash(&pw)?)
        }
        None => None,
    };
    let now = now_ms();
    let p = Principal {
        id: new_id(if kind == PrincipalKind::User {
            Kind::User
        } else {
            Kind::ServiceAccount
        }),
        org_id: ctx.org()?.id.clone(),
        kind,
        name: name_,
        display_name,
        email,
        description,
        mfa_enabled: false,
        has_password: hash.is_some(),
        locked_until: None,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    ctx.state
        .store
        .principal_create(&p, hash.as_deref())
        .await?;
    Ok(Tagged(StatusCode::CREATED, p, 1))
}

async fn update(
    ctx: &Ctx,
    kind: PrincipalKind,
    name: &str,
    gen: Option<i64>,
    body: UpdatePrincipal,
) -> Result<Tagged<Principal>, ApiError> {
    let p = ctx.principal(kind, name).await?;
    ctx.authorize(actions(kind)[3], &target(&p)).await?;
    for (f, v) in [
        ("display_name", &body.display_name),
        ("email", &body.email),
        ("description", &body.description),
    ] {
        if let Some(v) = v {
            check_text(f, v)?;
        }
    }
    let updated = ctx
        .state
        .store
        .principal_update(&p.id, gen, |p| {
            if let Some(v) = body.display_name {
                p.display_name = v;
            }
            if let Some(v) = body.email {
                p.email = v;
            }
            if let Some(v) = body.description {
                p.description = v;
            }
            Ok(())
        })
        .await?;
    let g = updated.generation;
    Ok(Tagged(StatusCode::OK, updated, g))
}

async fn delete(
    ctx: &Ctx,
    kind: PrincipalKind,
    name: &str,
    gen: Option<i64>,
) -> Result<StatusCode, ApiError> {
    let p = ctx.principal(kind, name).await?;
    ctx.authorize(actions(kind)[4], &target(&p)).await?;
    if p.id == ctx.subject.principal.id {
        return Err(ApiError::conflict(
            "cannot_delete_self",
            "a principal cannot delete itself",
        ));
    }
    ctx.state.store.principal_delete(&p.id, gen).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/users", tag = "users",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<Principal>), (status = 404, body = Problem)))]
pub async fn list_users(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<Principal>>> {
    Ok(Json(list(&ctx, PrincipalKind::User, page).await?))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/users", tag = "users", request_body = CreateUser,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = Principal), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_user(ctx: Ctx, Body(b): Body<CreateUser>) -> HandlerResult<Tagged<Principal>> {
    Ok(create(
        &ctx,
        PrincipalKind::User,
        b.name,
        b.display_name,
        b.email,
        String::new(),
        b.password,
    )
    .await?)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/users/{user}", tag = "users",
    params(("org" = String, Path, description = "Organization name or id"), ("user" = String, Path, description = "User name or id")),
    responses((status = 200, body = Principal), (status = 404, body = Problem)))]
pub async fn get_user(
    ctx: Ctx,
    Path((_org, user)): Path<(String, String)>,
) -> HandlerResult<Tagged<Principal>> {
    Ok(get_one(&ctx, PrincipalKind::User, &user).await?)
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/users/{user}", tag = "users", request_body = UpdatePrincipal,
    params(("org" = String, Path, description = "Organization name or id"), ("user" = String, Path, description = "User name or id"), IfMatch),
    responses((status = 200, body = Principal), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn update_user(
    ctx: Ctx,
    Path((_org, user)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
    Body(b): Body<UpdatePrincipal>,
) -> HandlerResult<Tagged<Principal>> {
    Ok(update(&ctx, PrincipalKind::User, &user, gen, b).await?)
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/users/{user}", tag = "users",
    params(("org" = String, Path, description = "Organization name or id"), ("user" = String, Path, description = "User name or id"), IfMatch),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_user(
    ctx: Ctx,
    Path((_org, user)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
) -> HandlerResult<StatusCode> {
    Ok(delete(&ctx, PrincipalKind::User, &user, gen).await?)
}

/// Set a user's password (administrators; users change their own through `/v1/me/password`).
#[utoipa::path(put, path = "/v1/orgs/{org}/users/{user}/password", tag = "users", request_body = SetPassword,
    params(("org" = String, Path, description = "Organization name or id"), ("user" = String, Path, description = "User name or id")),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn set_user_password(
    ctx: Ctx,
    Path((_org, user)): Path<(String, String)>,
    Body(b): Body<SetPassword>,
) -> HandlerResult<StatusCode> {
    let p = ctx.principal(PrincipalKind::User, &user).await?;
    ctx.authorize("user.set_password", &target(&p)).await?;
    password::check_strength(&b.password)?;
    let hash = password::hash(&b.password)?;
    ctx.state.store.principal_set_password(&p.id, &hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user's second factor so they can enrol a new one.
#[utoipa::path(delete, path = "/v1/orgs/{org}/users/{user}/mfa", tag = "users",
    params(("org" = String, Path, description = "Organization name or id"), ("user" = String, Path, description = "User name or id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn reset_user_mfa(
    ctx: Ctx,
    Path((_org, user)): Path<(String, String)>,
) -> HandlerResult<StatusCode> {
    let p = ctx.principal(PrincipalKind::User, &user).await?;
    ctx.authorize("user.reset_mfa", &target(&p)).await?;
    ctx.state.store.principal_clear_totp(&p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/service-accounts", tag = "service-accounts",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<Principal>), (status = 404, body = Problem)))]
pub async fn list_service_accounts(
    ctx: Ctx,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Principal>>> {
    Ok(Json(list(&ctx, PrincipalKind::ServiceAccount, page).await?))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/service-accounts", tag = "service-accounts", request_body = CreateServiceAccount,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = Principal), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_service_account(
    ctx: Ctx,
    Body(b): Body<CreateServiceAccount>,
) -> HandlerResult<Tagged<Principal>> {
    Ok(create(
        &ctx,
        PrincipalKind::ServiceAccount,
        b.name,
        String::new(),
        String::new(),
        b.description,
        None,
    )
    .await?)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/service-accounts/{service_account}", tag = "service-accounts",
    params(("org" = String, Path, description = "Organization name or id"), ("service_account" = String, Path, description = "Service account name or id")),
    responses((status = 200, body = Principal), (status = 404, body = Problem)))]
pub async fn get_service_account(
    ctx: Ctx,
    Path((_org, sa)): Path<(String, String)>,
) -> HandlerResult<Tagged<Principal>> {
    Ok(get_one(&ctx, PrincipalKind::ServiceAccount, &sa).await?)
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/service-accounts/{service_account}", tag = "service-accounts", request_body = UpdatePrincipal,
    params(("org" = String, Path, description = "Organization name or id"), ("service_account" = String, Path, description = "Service account name or id"), IfMatch),
    responses((status = 200, body = Principal), (status = 404, body = Problem)))]
pub async fn update_service_account(
    ctx: Ctx,
    Path((_org, sa)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
    Body(b): Body<UpdatePrincipal>,
) -> HandlerResult<Tagged<Principal>> {
    Ok(update(&ctx, PrincipalKind::ServiceAccount, &sa, gen, b).await?)
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/service-accounts/{service_account}", tag = "service-accounts",
    params(("org" = String, Path, description = "Organization name or id"), ("service_account" = String, Path, description = "Service account name or id"), IfMatch),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_service_account(
    ctx: Ctx,
    Path((_org, sa)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
) -> HandlerResult<StatusCode> {
    Ok(delete(&ctx, PrincipalKind::ServiceAccount, &sa, gen).await?)
}
