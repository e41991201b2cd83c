//! Access management: built-in roles, role bindings, custom Cedar policies
//! and the "would this be allowed?" tester.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{
    CreatePolicy, CreateRoleBinding, Policy, PolicyDecision, PolicyTest, PrincipalKind,
    PrincipalRef, Role, RoleBinding, UpdatePolicy,
};
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::{Authorizer, Env, Subject, Target, TestResource, ROLES};

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::problem::{HandlerResult, Problem};

#[utoipa::path(get, path = "/v1/orgs/{org}/roles", tag = "access",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = Vec<Role>)))]
pub async fn list_roles(ctx: Ctx) -> HandlerResult<Json<Vec<Role>>> {
    ctx.authorize("role.list", &ctx.org_target()?).await?;
    let org = ctx.org()?;
    let reg = ctx.state.authz.registry();
    Ok(Json(
        ROLES
            .iter()
            .map(|(name, description)| Role {
                name: name.to_string(),
                description: description.to_string(),
                actions: reg
                    .role_actions(name)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                requires_mfa: org.mfa_required_roles.iter().any(|r| r == name),
            })
            .collect(),
    ))
}

async fn subject_ref(ctx: &Ctx, spec: &str) -> Result<PrincipalRef, ApiError> {
    if let Some(group) = spec.strip_prefix("group:") {
        let g = ctx
            .state
            .store
            .group_get(&ctx.org()?.id, group)
            .await?
            .ok_or_else(|| ApiError::not_found("group", group))?;
        return Ok(PrincipalRef {
            id: g.id,
            kind: "group".to_string(),
            name: g.name,
        });
    }
    if spec.starts_with("grp_") {
        if let Some(g) = ctx.state.store.group_get(&ctx.org()?.id, spec).await? {
            return Ok(PrincipalRef {
                id: g.id,
                kind: "group".to_string(),
                name: g.name,
            });
        }
    }
    let p = ctx.principal_ref(spec).await?;
    Ok(PrincipalRef {
        id: p.id,
        kind: p.kind.as_str().to_string(),
        name: p.name,
    })
}

async fn create_binding(
    ctx: &Ctx,
    b: CreateRoleBinding,
    project: Option<String>,
) -> Result<Tagged<RoleBinding>, ApiError> {
    let org = ctx.org()?;
    let (target, project_id) = match project.or(b.project) {
        Some(p) => {
            let p = ctx.project(&p).await?;
            (Target::project(&org.id, &p.id, &p.name), Some(p.id))
        }
        None => (ctx.org_target()?, None),
    };
    let action = if b.role == "owner" {
        "role_binding.grant_owner"
    } else {
        "role_binding.create"
    };
    ctx.authorize(action, &target).await?;
    if !ctx.state.authz.registry().is_role(&b.role) {
        return Err(ApiError::bad_request(
            "unknown_role",
            format!("no role named {:?}", b.role),
        ));
    }
    let subject = subject_ref(ctx, &b.principal).await?;
    let binding = RoleBinding {
        id: new_id(Kind::RoleBinding),
        org_id: org.id.clone(),
        project_id,
        subject,
        role: b.role,
        created_at: now_ms(),
    };
    ctx.state.store.role_binding_create(&binding).await?;
    Ok(Tagged(StatusCode::CREATED, binding, 1))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/role-bindings", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<RoleBinding>)))]
pub async fn list_org_bindings(
    ctx: Ctx,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<RoleBinding>>> {
    ctx.authorize("role_binding.list", &ctx.org_target()?)
        .await?;
    Ok(Json(
        ctx.state
            .store
            .role_binding_list(&ctx.org()?.id, None, &page.validate()?)
            .await?,
    ))
}

/// Grant a role on the organization (or on a project with `project`).
#[utoipa::path(post, path = "/v1/orgs/{org}/role-bindings", tag = "access", request_body = CreateRoleBinding,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = RoleBinding), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_org_binding(
    ctx: Ctx,
    Body(b): Body<CreateRoleBinding>,
) -> HandlerResult<Tagged<RoleBinding>> {
    Ok(create_binding(&ctx, b, None).await?)
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/role-bindings", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<RoleBinding>), (status = 404, body = Problem)))]
pub async fn list_project_bindings(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<RoleBinding>>> {
    let p = ctx.project(&project).await?;
    ctx.authorize(
        "role_binding.list",
        &Target::project(&p.org_id, &p.id, &p.name),
    )
    .await?;
    Ok(Json(
        ctx.state
            .store
            .role_binding_list(&p.org_id, Some(&p.id), &page.validate()?)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/role-bindings", tag = "access", request_body = CreateRoleBinding,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = RoleBinding), (status = 404, body = Problem)))]
pub async fn create_project_binding(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(b): Body<CreateRoleBinding>,
) -> HandlerResult<Tagged<RoleBinding>> {
    Ok(create_binding(&ctx, b, Some(project)).await?)
}

async fn binding(ctx: &Ctx, id: &str) -> Result<(RoleBinding, Target), ApiError> {
    let org = ctx.org()?;
    let b = ctx
        .state
        .store
        .role_binding_get(&org.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("role binding", id))?;
    let target = match &b.project_id {
        Some(p) => {
            let p = ctx.project(p).await?;
            Target::project(&org.id, &p.id, &p.name)
        }
        None => ctx.org_target()?,
    };
    Ok((b, target))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/role-bindings/{binding}", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), ("binding" = String, Path, description = "Role binding id")),
    responses((status = 200, body = RoleBinding), (status = 404, body = Problem)))]
pub async fn get_binding(
    ctx: Ctx,
    Path((_org, id)): Path<(String, String)>,
) -> HandlerResult<Json<RoleBinding>> {
    let (b, target) = binding(&ctx, &id).await?;
    ctx.authorize("role_binding.get", &target).await?;
    Ok(Json(b))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/role-bindings/{binding}", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), ("binding" = String, Path, description = "Role binding id")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_binding(
    ctx: Ctx,
    Path((_org, id)): Path<(String, String)>,
) -> HandlerResult<StatusCode> {
    let (b, target) = binding(&ctx, &id).await?;
    let action = if b.role == "owner" {
        "role_binding.grant_owner"
    } else {
        "role_binding.delete"
    };
    ctx.authorize(action, &target).await?;
    ctx.state
        .store
        .role_binding_delete(&b.org_id, &b.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn policy_target(p: &Policy) -> Target {
    Target::in_org("Policy", &p.org_id, &p.id, &p.name)
}

fn check_policy(name_: &str, body: &str) -> Result<(), ApiError> {
    Authorizer::parse_custom(name_, body).map(|_| ())
}

async fn policy(ctx: &Ctx, name: &str) -> Result<Policy, ApiError> {
    ctx.state
        .store
        .policy_get(&ctx.org()?.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("policy", name))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/policies", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<Policy>)))]
pub async fn list_policies(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<Policy>>> {
    ctx.authorize("policy.list", &ctx.org_target()?).await?;
    Ok(Json(
        ctx.state
            .store
            .policy_list(&ctx.org()?.id, &page.validate()?)
            .await?,
    ))
}

/// Add a custom Cedar policy (permit or forbid) to the organization.
#[utoipa::path(post, path = "/v1/orgs/{org}/policies", tag = "access", request_body = CreatePolicy,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = Policy), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_policy(ctx: Ctx, Body(b): Body<CreatePolicy>) -> HandlerResult<Tagged<Policy>> {
    ctx.authorize("policy.create", &ctx.org_target()?).await?;
    name::validate("policy", &b.name)?;
    check_policy(&b.name, &b.body)?;
    let now = now_ms();
    let p = Policy {
        id: new_id(Kind::Policy),
        org_id: ctx.org()?.id.clone(),
        name: b.name,
        description: b.description,
        body: b.body,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    ctx.state.store.policy_create(&p).await?;
    Ok(Tagged(StatusCode::CREATED, p, 1))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/policies/{policy}", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), ("policy" = String, Path, description = "Policy name or id")),
    responses((status = 200, body = Policy), (status = 404, body = Problem)))]
pub async fn get_policy(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
) -> HandlerResult<Tagged<Policy>> {
    let p = policy(&ctx, &name).await?;
    ctx.authorize("policy.get", &policy_target(&p)).await?;
    let g = p.generation;
    Ok(Tagged(StatusCode::OK, p, g))
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/policies/{policy}", tag = "access", request_body = UpdatePolicy,
    params(("org" = String, Path, description = "Organization name or id"), ("policy" = String, Path, description = "Policy name or id"), IfMatch),
    responses((status = 200, body = Policy), (status = 400, body = Problem), (status = 412, body = Problem)))]
pub async fn update_policy(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
    Body(b): Body<UpdatePolicy>,
) -> HandlerResult<Tagged<Policy>> {
    let p = policy(&ctx, &name).await?;
    ctx.authorize("policy.update", &policy_target(&p)).await?;
    if let Some(body) = &b.body {
        check_policy(&p.name, body)?;
    }
    let updated = ctx
        .state
        .store
        .policy_update(&p.org_id, &p.id, gen, |p| {
            if let Some(d) = b.description {
                p.description = d;
            }
            if let Some(body) = b.body {
                p.body = body;
            }
            Ok(())
        })
        .await?;
    let g = updated.generation;
    Ok(Tagged(StatusCode::OK, updated, g))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/policies/{policy}", tag = "access",
    params(("org" = String, Path, description = "Organization name or id"), ("policy" = String, Path, description = "Policy name or id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_policy(
    ctx: Ctx,
    Path((_org, name)): Path<(String, String)>,
) -> HandlerResult<StatusCode> {
    let p = policy(&ctx, &name).await?;
    ctx.authorize("policy.delete", &policy_target(&p)).await?;
    ctx.state.store.policy_delete(&p.org_id, &p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Would `principal` be allowed `action` on `resource`, and by which policy?
#[utoipa::path(post, path = "/v1/orgs/{org}/policy-test", tag = "access", request_body = PolicyTest,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = PolicyDecision), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn test_policy(
    ctx: Ctx,
    Body(b): Body<PolicyTest>,
) -> HandlerResult<Json<PolicyDecision>> {
    ctx.authorize("policy.test", &ctx.org_target()?).await?;
    let org = ctx.org()?.clone();
    if !ctx.state.authz.registry().contains(&b.action) {
        return Err(ApiError::bad_request(
            "unknown_action",
            format!("no action named {:?}", b.action),
        )
        .into());
    }
    let principal = ctx.principal_ref(&b.principal).await?;
    let subject = Subject {
        group_ids: ctx.state.store.principal_group_ids(&principal.id).await?,
        principal,
        token_id: String::new(),
        mfa: b.mfa,
        org_policy_generation: ctx.state.store.org_policy_generation(&org.id).await?,
        org_mfa_roles: org.mfa_required_roles.clone(),
        org: Some(org.clone()),
    };
    let target = match b.resource.parse::<TestResource>()? {
        TestResource::Org => Target::org(&org.id, &org.name),
        TestResource::Project(n) => {
            let p = ctx.project(&n).await?;
            Target::project(&org.id, &p.id, &p.name)
        }
        TestResource::User(n) => {
            let p = ctx.principal(PrincipalKind::User, &n).await?;
            Target::principal(&org.id, p.kind, &p.id, &p.name)
        }
        TestResource::ServiceAccount(n) => {
            let p = ctx.principal(PrincipalKind::ServiceAccount, &n).await?;
            Target::principal(&org.id, p.kind, &p.id, &p.name)
        }
        TestResource::Group(n) => {
            let g = ctx
                .state
                .store
                .group_get(&org.id, &n)
                .await?
                .ok_or_else(|| ApiError::not_found("group", &n))?;
            Target::in_org("Group", &org.id, &g.id, &g.name)
        }
    };
    let source_ip = b.source_ip.unwrap_or_else(|| "127.0.0.1".to_string());
    if source_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(
            ApiError::bad_request("invalid_source_ip", "source_ip must be an IP address").into(),
        );
    }
    let env = Env {
        source_ip,
        now_secs: now_ms() / 1000,
    };
    let d = ctx
        .state
        .authz
        .decide(&subject, &b.action, &target, &env)
        .await?;
    Ok(Json(PolicyDecision {
        decision: if d.allowed { "allow" } else { "deny" }.to_string(),
        policies: d.policies,
        roles: d.roles,
    }))
}
