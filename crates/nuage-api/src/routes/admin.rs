//! The operator realm, served only on the admin listener: organizations and
//! their quotas, operators, operator tokens and the platform audit log.
//! Operators hold no role inside any organization: nothing here reads
//! tenant resources.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use http::StatusCode;
use nuage_audit::log::PLATFORM_LOG;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{
    AuditCheckpoint, AuditEntry, AuditProof, AuditPublicKey, ChangePassword, CreateOperator,
    CreateOrg, CreateToken, OperatorCreated, OperatorLogin, Org, OrgCreated, Principal,
    PrincipalKind, PrincipalRef, RoleBinding, Session, Token, TokenSecret, TotpCode,
    TotpEnrollment, UpdateOrgQuota, WhoAmI,
};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::authn::{new_token, DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS};
use nuage_iam::password;

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::observe::AuditSlot;
use crate::problem::{HandlerResult, Problem};
use crate::routes::audit::{
    self, AuditQuery, CheckpointQuery, ConsistencyQuery, ExportQuery, InclusionQuery,
};
use crate::routes::auth::{self, record_login, sensitive};
use crate::state::AppState;

pub const DEFAULT_MAX_PROJECTS: i64 = 1000;

fn check_quota(n: i64) -> Result<(), ApiError> {
    if !(0..=1_000_000).contains(&n) {
        return Err(ApiError::bad_request(
            "invalid_quota",
            "max_projects must be between 0 and 1000000",
        ));
    }
    Ok(())
}

/// Operator login: password and TOTP (operators must have a second factor).
#[utoipa::path(post, path = "/admin/v1/login", tag = "operator", request_body = OperatorLogin,
    responses((status = 200, body = Session), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Body(b): Body<OperatorLogin>,
) -> HandlerResult<Response> {
    let r = state
        .authn
        .login(
            "",
            PrincipalKind::Operator,
            &b.name,
            &b.password,
            b.totp.as_deref(),
        )
        .await;
    match r {
        Ok(s) => {
            record_login(&slot, Some(PLATFORM_LOG), &b.name, Ok(&s.principal));
            Ok(sensitive(StatusCode::OK, s))
        }
        Err(e) => {
            record_login(&slot, Some(PLATFORM_LOG), &b.name, Err(()));
            Err(e.into())
        }
    }
}

#[utoipa::path(get, path = "/admin/v1/me", tag = "operator", responses((status = 200, body = WhoAmI)))]
pub async fn me(ctx: Ctx) -> Json<WhoAmI> {
    Json(auth::whoami(&ctx))
}

#[utoipa::path(put, path = "/admin/v1/me/password", tag = "operator", request_body = ChangePassword,
    responses((status = 204), (status = 400, body = Problem)))]
pub async fn change_password(ctx: Ctx, Body(b): Body<ChangePassword>) -> HandlerResult<StatusCode> {
    Ok(auth::do_change_password(&ctx, b).await?)
}

#[utoipa::path(post, path = "/admin/v1/me/mfa", tag = "operator", responses((status = 200, body = TotpEnrollment)))]
pub async fn enroll_mfa(ctx: Ctx) -> HandlerResult<Response> {
    Ok(auth::do_enroll(&ctx).await?)
}

#[utoipa::path(post, path = "/admin/v1/me/mfa/confirm", tag = "operator", request_body = TotpCode,
    responses((status = 204), (status = 400, body = Problem)))]
pub async fn confirm_mfa(ctx: Ctx, Body(b): Body<TotpCode>) -> HandlerResult<StatusCode> {
    Ok(auth::do_confirm(&ctx, &b.code).await?)
}

#[utoipa::path(get, path = "/admin/v1/orgs", tag = "operator", params(PageParams),
    responses((status = 200, body = Page<Org>)))]
pub async fn list_orgs(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<Org>>> {
    ctx.allow_operator("org.list", "platform");
    Ok(Json(ctx.state.store.org_list(&page.validate()?).await?))
}

/// Create an organization with its first owner.
#[utoipa::path(post, path = "/admin/v1/orgs", tag = "operator", request_body = CreateOrg,
    responses((status = 201, body = OrgCreated), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_org(ctx: Ctx, Body(b): Body<CreateOrg>) -> HandlerResult<Response> {
    ctx.allow_operator("org.create", &format!("org:{}", b.name));
    name::validate("organization", &b.name)?;
    name::validate("user", &b.owner.name)?;
    let max_projects = b.max_projects.unwrap_or(DEFAULT_MAX_PROJECTS);
    check_quota(max_projects)?;
    let hash = match &b.owner.password {
        Some(pw) => {
            password::check_strength(pw)?;
            Some(password::hash(pw)?)
        }
        None => None,
    };
    let now = now_ms();
    let org = Org {
        id: new_id(Kind::Org),
        name: b.name.clone(),
        display_name: if b.display_name.is_empty() {
            b.name.clone()
        } else {
            b.display_name
        },
        mfa_required_roles: Vec::new(),
        max_projects,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    let owner = Principal {
        id: new_id(Kind::User),
        org_id: org.id.clone(),
        kind: PrincipalKind::User,
        name: b.owner.name.clone(),
        display_name: b.owner.name.clone(),
        email: b.owner.email,
        description: String::new(),
        mfa_enabled: false,
        has_password: hash.is_some(),
        locked_until: None,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    let binding = RoleBinding {
        id: new_id(Kind::RoleBinding),
        org_id: org.id.clone(),
        project_id: None,
        subject: PrincipalRef {
            id: owner.id.clone(),
            kind: "user".to_string(),
            name: owner.name.clone(),
        },
        role: "owner".to_string(),
        created_at: now,
    };
    let token = hash.is_none().then(|| {
        new_token(
            &owner,
            "owner-bootstrap",
            "api",
            false,
            DEFAULT_TOKEN_TTL_SECS,
        )
    });
    ctx.state
        .store
        .org_create(
            &org,
            &owner,
            hash.as_deref(),
            &binding,
            token.as_ref().map(|t| &t.1),
        )
        .await?;
    Ok(sensitive(
        StatusCode::CREATED,
        OrgCreated {
            org,
            owner,
            owner_token: token.map(|t| t.0),
        },
    ))
}

async fn org(ctx: &Ctx, name: &str) -> Result<Org, ApiError> {
    ctx.state
        .store
        .org_get(name)
        .await?
        .ok_or_else(|| ApiError::not_found("organization", name))
}

#[utoipa::path(get, path = "/admin/v1/orgs/{org}", tag = "operator",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = Org), (status = 404, body = Problem)))]
pub async fn get_org(ctx: Ctx, Path(name): Path<String>) -> HandlerResult<Tagged<Org>> {
    ctx.allow_operator("org.get", &format!("org:{name}"));
    let o = org(&ctx, &name).await?;
    let g = o.generation;
    Ok(Tagged(StatusCode::OK, o, g))
}

/// Set an organization's quota.
#[utoipa::path(patch, path = "/admin/v1/orgs/{org}", tag = "operator", request_body = UpdateOrgQuota,
    params(("org" = String, Path, description = "Organization name or id"), IfMatch),
    responses((status = 200, body = Org), (status = 404, body = Problem)))]
pub async fn update_org(
    ctx: Ctx,
    Path(name): Path<String>,
    IfMatch(gen): IfMatch,
    Body(b): Body<UpdateOrgQuota>,
) -> HandlerResult<Tagged<Org>> {
    ctx.allow_operator("org.update_quota", &format!("org:{name}"));
    check_quota(b.max_projects)?;
    let o = org(&ctx, &name).await?;
    let o = ctx
        .state
        .store
        .org_update(&o.id, gen, |o| {
            o.max_projects = b.max_projects;
            Ok(())
        })
        .await?;
    let g = o.generation;
    Ok(Tagged(StatusCode::OK, o, g))
}

/// Set the object storage quota of the organization's project named
/// `project` (bytes and objects over all its buckets; `{}` removes it).
/// Writes that would exceed it are refused. The quota is recorded for the
/// name whether or not such a project exists, and applies to one created
/// later under it: the answer, the quota as set, tells the operator nothing
/// of the tenant's project (whether it exists, what it holds). The tenant
/// reads its quota and usage at `GET /v1/orgs/{org}/projects/{project}/storage`.
#[utoipa::path(put, path = "/admin/v1/orgs/{org}/projects/{project}/storage-quota", tag = "operator",
    request_body = nuage_objects::buckets::StorageQuota,
    params(("org" = String, Path, description = "Organization name or id"),
        ("project" = String, Path, description = "Project name (not id)")),
    responses((status = 200, body = nuage_objects::buckets::StorageQuota, description = "The quota as set"),
        (status = 400, body = Problem), (status = 404, body = Problem, description = "No such organization")))]
pub async fn set_project_storage_quota(
    ctx: Ctx,
    Path((name, project)): Path<(String, String)>,
    Body(q): Body<nuage_objects::buckets::StorageQuota>,
) -> HandlerResult<Json<nuage_objects::buckets::StorageQuota>> {
    ctx.allow_operator(
        "project.update_storage_quota",
        &format!("org:{name}/project:{project}"),
    );
    name::validate("project", &project)?;
    let (bytes, objects) = q.to_stored()?;
    let o = org(&ctx, &name).await?;
    ctx.state
        .store
        .project_set_storage_quota(&o.id, &project, bytes, objects)
        .await?;
    Ok(Json(nuage_objects::buckets::StorageQuota::from_stored(
        bytes, objects,
    )))
}

/// Delete an organization that holds no project.
#[utoipa::path(delete, path = "/admin/v1/orgs/{org}", tag = "operator",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_org(ctx: Ctx, Path(name): Path<String>) -> HandlerResult<StatusCode> {
    ctx.allow_operator("org.delete", &format!("org:{name}"));
    let o = org(&ctx, &name).await?;
    ctx.state.store.org_delete(&o.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/admin/v1/operators", tag = "operator", params(PageParams),
    responses((status = 200, body = Page<Principal>)))]
pub async fn list_operators(
    ctx: Ctx,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Principal>>> {
    ctx.allow_operator("operator.list", "platform");
    Ok(Json(
        ctx.state
            .store
            .principal_list("", PrincipalKind::Operator, &page.validate()?)
            .await?,
    ))
}

/// Create an operator; the answer holds a one-day token it enrols its
/// second factor with (operators log in with password and TOTP).
#[utoipa::path(post, path = "/admin/v1/operators", tag = "operator", request_body = CreateOperator,
    responses((status = 201, body = OperatorCreated), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_operator(ctx: Ctx, Body(b): Body<CreateOperator>) -> HandlerResult<Response> {
    ctx.allow_operator("operator.create", &format!("operator:{}", b.name));
    name::validate("operator", &b.name)?;
    password::check_strength(&b.password)?;
    let hash = password::hash(&b.password)?;
    let now = now_ms();
    let p = Principal {
        id: new_id(Kind::Operator),
        org_id: String::new(),
        kind: PrincipalKind::Operator,
        name: b.name,
        display_name: String::new(),
        email: b.email,
        description: String::new(),
        mfa_enabled: false,
        has_password: true,
        locked_until: None,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    ctx.state.store.principal_create(&p, Some(&hash)).await?;
    let token = ctx
        .state
        .authn
        .issue_token(&p, "enrollment", "api", false, 24 * 3600)
        .await?;
    Ok(sensitive(
        StatusCode::CREATED,
        OperatorCreated {
            operator: p,
            enrollment_token: token,
        },
    ))
}

#[utoipa::path(delete, path = "/admin/v1/operators/{operator}", tag = "operator",
    params(("operator" = String, Path, description = "Operator name or id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_operator(ctx: Ctx, Path(name): Path<String>) -> HandlerResult<StatusCode> {
    ctx.allow_operator("operator.delete", &format!("operator:{name}"));
    let p = ctx
        .state
        .store
        .principal_get("", PrincipalKind::Operator, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("operator", &name))?;
    if p.id == ctx.subject.principal.id {
        return Err(
            ApiError::conflict("cannot_delete_self", "an operator cannot delete itself").into(),
        );
    }
    ctx.state.store.principal_delete(&p.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/admin/v1/tokens", tag = "operator", params(PageParams),
    responses((status = 200, body = Page<Token>)))]
pub async fn list_tokens(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<Token>>> {
    ctx.allow_operator("token.list", "platform");
    Ok(Json(
        ctx.state
            .store
            .token_list("", Some(&ctx.subject.principal.id), &page.validate()?)
            .await?,
    ))
}

#[utoipa::path(post, path = "/admin/v1/tokens", tag = "operator", request_body = CreateToken,
    responses((status = 201, body = TokenSecret), (status = 400, body = Problem)))]
pub async fn create_token(ctx: Ctx, Body(b): Body<CreateToken>) -> HandlerResult<Response> {
    ctx.allow_operator(
        "token.create",
        &format!("operator:{}", ctx.subject.principal.name),
    );
    if b.principal.is_some() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "operators create tokens for themselves only",
        )
        .into());
    }
    name::validate("token", &b.name)?;
    let ttl = b.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !(60..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_seconds must be between 60 and {MAX_TOKEN_TTL_SECS}"),
        )
        .into());
    }
    let t = ctx
        .state
        .authn
        .issue_token(&ctx.subject.principal, &b.name, "api", ctx.subject.mfa, ttl)
        .await?;
    Ok(sensitive(StatusCode::CREATED, t))
}

#[utoipa::path(delete, path = "/admin/v1/tokens/{token}", tag = "operator",
    params(("token" = String, Path, description = "Token id")),
    responses((status = 200, body = Token), (status = 404, body = Problem)))]
pub async fn revoke_token(ctx: Ctx, Path(id): Path<String>) -> HandlerResult<Json<Token>> {
    ctx.allow_operator("token.revoke", &format!("token:{id}"));
    Ok(Json(ctx.state.store.token_revoke("", &id, now_ms()).await?))
}

#[utoipa::path(get, path = "/admin/v1/audit/entries", tag = "operator", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>)))]
pub async fn list_audit(ctx: Ctx, Q(q): Q<AuditQuery>) -> HandlerResult<Json<Page<AuditEntry>>> {
    ctx.allow_operator("audit.read", "platform");
    Ok(Json(audit::entries(&ctx, PLATFORM_LOG, q).await?))
}

#[utoipa::path(get, path = "/admin/v1/audit/checkpoint", tag = "operator", params(CheckpointQuery),
    responses((status = 200, body = AuditCheckpoint), (status = 404, body = Problem)))]
pub async fn get_checkpoint(
    ctx: Ctx,
    Q(q): Q<CheckpointQuery>,
) -> HandlerResult<Json<AuditCheckpoint>> {
    ctx.allow_operator("audit.read", "platform");
    Ok(Json(audit::checkpoint(&ctx, PLATFORM_LOG, q.size).await?))
}

#[utoipa::path(post, path = "/admin/v1/audit/checkpoint", tag = "operator",
    responses((status = 200, body = AuditCheckpoint)))]
pub async fn create_checkpoint(ctx: Ctx) -> HandlerResult<Json<AuditCheckpoint>> {
    ctx.allow_operator("audit.checkpoint", "platform");
    Ok(Json(audit::sign_now(&ctx, PLATFORM_LOG).await?))
}

#[utoipa::path(get, path = "/admin/v1/audit/proofs/inclusion", tag = "operator", params(InclusionQuery),
    responses((status = 200, body = AuditProof)))]
pub async fn inclusion_proof(ctx: Ctx, Q(q): Q<InclusionQuery>) -> HandlerResult<Json<AuditProof>> {
    ctx.allow_operator("audit.read", "platform");
    Ok(Json(audit::inclusion(&ctx, PLATFORM_LOG, q).await?))
}

#[utoipa::path(get, path = "/admin/v1/audit/proofs/consistency", tag = "operator", params(ConsistencyQuery),
    responses((status = 200, body = AuditProof)))]
pub async fn consistency_proof(
    ctx: Ctx,
    Q(q): Q<ConsistencyQuery>,
) -> HandlerResult<Json<AuditProof>> {
    ctx.allow_operator("audit.read", "platform");
    Ok(Json(audit::consistency(&ctx, PLATFORM_LOG, q).await?))
}

#[utoipa::path(get, path = "/admin/v1/audit/export", tag = "operator", params(ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String)))]
pub async fn export_audit(ctx: Ctx, Q(q): Q<ExportQuery>) -> HandlerResult<Response> {
    ctx.allow_operator("audit.read", "platform");
    Ok(audit::export_log(&ctx, PLATFORM_LOG, q).await?)
}

#[utoipa::path(get, path = "/admin/v1/audit/public-key", tag = "operator",
    responses((status = 200, body = AuditPublicKey)))]
pub async fn public_key(ctx: Ctx) -> HandlerResult<Json<AuditPublicKey>> {
    ctx.allow_operator("audit.read", "platform");
    Ok(Json(AuditPublicKey {
        verifier_key: ctx.state.audit.verifier_key(),
    }))
}
