//! Project keys: lifecycle (create, rotate, disable, destruction) for key
//! admins, and encrypt/decrypt for crypto users — separate duties, separate
//! actions. Every use names its key version and purpose in the audit entry.

use axum::extract::Path;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::StatusCode;
use nuage_core::model::kms::{
    CreateKey, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, Justification,
    Key, KeyState, RewrapProgress, RewrapRequest, RotateKey, ScheduleDestruction, UpdateKey,
};
use nuage_core::model::Project;
use nuage_core::page::{Page, PageParams};
use nuage_core::time::now_ms;
use nuage_core::{name, ApiError};
use nuage_iam::actions::{ActionDef, Level};
use nuage_iam::Target;
use nuage_kms::service::justifications_text;
use nuage_store::KeyRow;

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::problem::{HandlerResult, Problem};

const fn act(name: &'static str, level: Level, also: &'static [&'static str]) -> ActionDef {
    ActionDef { name, level, also }
}

const KEY_ADMIN: &[&str] = &["key-admin"];
const CRYPTO_USER: &[&str] = &["crypto-user"];

/// Actions of the key service.
pub const ACTIONS: &[ActionDef] = &[
    act("kms.list", Level::Read, &["key-admin", "crypto-user"]),
    act("kms.get", Level::Read, &["key-admin", "crypto-user"]),
    act("kms.create", Level::Admin, KEY_ADMIN),
    act("kms.update", Level::Admin, KEY_ADMIN),
    act("kms.rotate", Level::Admin, KEY_ADMIN),
    act("kms.enable", Level::Admin, KEY_ADMIN),
    act("kms.disable", Level::Admin, KEY_ADMIN),
    act("kms.schedule_destruction", Level::Admin, KEY_ADMIN),
    act("kms.cancel_destruction", Level::Admin, KEY_ADMIN),
    act("kms.rewrap", Level::Admin, KEY_ADMIN),
    // Immediate, irreversible destruction: owners and key admins, and only
    // with a second factor (checked by the handler).
    act("kms.destroy", Level::Owner, KEY_ADMIN),
    // Direct use of key material is never implied by a broad role.
    act("kms.encrypt", Level::Narrow, CRYPTO_USER),
    act("kms.decrypt", Level::Narrow, CRYPTO_USER),
    // Services (objects, volumes …) using a key for the caller.
    act("kms.use", Level::Write, CRYPTO_USER),
    act("key_manager.list", Level::Read, KEY_ADMIN),
    act("key_manager.get", Level::Read, KEY_ADMIN),
    act("key_manager.create", Level::Admin, KEY_ADMIN),
    act("key_manager.delete", Level::Admin, KEY_ADMIN),
];

type KeyPath = Path<(String, String, String)>;

fn target(p: &Project) -> Target {
    Target::project(&p.org_id, &p.id, &p.name)
}

async fn key_in(ctx: &Ctx, p: &Project, key: &str) -> Result<KeyRow, ApiError> {
    ctx.state
        .store
        .kms_key_get(&p.id, key)
        .await?
        .ok_or_else(|| ApiError::not_found("key", key))
}

/// Resolves the project and key, then decides `action` on the project.
async fn authorized_key(
    ctx: &Ctx,
    project: &str,
    key: &str,
    action: &'static str,
) -> Result<(Project, KeyRow), ApiError> {
    let p = ctx.project(project).await?;
    ctx.authorize(action, &target(&p)).await?;
    let k = key_in(ctx, &p, key).await?;
    ctx.record_detail("key_id", &k.id);
    Ok((p, k))
}

async fn view(ctx: &Ctx, k: &KeyRow, status: StatusCode) -> HandlerResult<Tagged<Key>> {
    let key = ctx.state.kms.key_view(k).await?;
    let g = key.generation;
    Ok(Tagged(status, key, g))
}

fn check_justifications(j: &Option<Vec<Justification>>) -> Result<(), ApiError> {
    if let Some(list) = j {
        if list.len() > Justification::ALL.len() {
            return Err(ApiError::bad_request(
                "invalid_justifications",
                "list each purpose at most once",
            ));
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/keys", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), PageParams),
    responses((status = 200, body = Page<Key>), (status = 404, body = Problem)))]
pub async fn list(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Q(page): Q<PageParams>,
) -> HandlerResult<Json<Page<Key>>> {
    let p = ctx.project(&project).await?;
    ctx.authorize("kms.list", &target(&p)).await?;
    let page = page.validate()?;
    let rows = ctx.state.store.kms_key_list(&p.id, &page).await?;
    let mut items = Vec::with_capacity(rows.items.len());
    for k in &rows.items {
        items.push(ctx.state.kms.key_view(k).await?);
    }
    Ok(Json(Page {
        items,
        next_page_token: rows.next_page_token,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys", tag = "keys", request_body = CreateKey,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id")),
    responses((status = 201, body = Key), (status = 400, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Path((_org, project)): Path<(String, String)>,
    Body(body): Body<CreateKey>,
) -> HandlerResult<Tagged<Key>> {
    let p = ctx.project(&project).await?;
    ctx.authorize("kms.create", &target(&p)).await?;
    name::validate("key", &body.name)?;
    crate::routes::projects::check_description(&body.description)?;
    check_justifications(&body.allowed_justifications)?;
    let manager = match &body.external {
        Some(e) => Some((
            ctx.state
                .store
                .kms_manager_get(&p.org_id, &e.manager)
                .await?
                .ok_or_else(|| ApiError::not_found("key manager", &e.manager))?,
            e.key_id.clone(),
        )),
        None => None,
    };
    let k = ctx
        .state
        .kms
        .key_create(
            &p.org_id,
            &p.id,
            &body.name,
            &body.description,
            manager.as_ref().map(|(m, r)| (m, r.as_str())),
            &body.allowed_justifications,
        )
        .await?;
    ctx.record_detail("key_id", &k.id);
    view(&ctx, &k, StatusCode::CREATED).await
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/keys/{key}", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id")),
    responses((status = 200, body = Key), (status = 404, body = Problem)))]
pub async fn get(ctx: Ctx, Path((_org, project, key)): KeyPath) -> HandlerResult<Tagged<Key>> {
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.get").await?;
    view(&ctx, &k, StatusCode::OK).await
}

#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}/keys/{key}", tag = "keys", request_body = UpdateKey,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id"), IfMatch),
    responses((status = 200, body = Key), (status = 400, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
pub async fn update(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    IfMatch(gen): IfMatch,
    Body(body): Body<UpdateKey>,
) -> HandlerResult<Tagged<Key>> {
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.update").await?;
    if let Some(d) = &body.description {
        crate::routes::projects::check_description(d)?;
    }
    check_justifications(&body.allowed_justifications)?;
    if body.allow_all_justifications && body.allowed_justifications.is_some() {
        return Err(ApiError::bad_request(
            "invalid_justifications",
            "give allowed_justifications or allow_all_justifications, not both",
        )
        .into());
    }
    let k = ctx
        .state
        .kms
        .key_update(&k.id, gen, |row| {
            if let Some(d) = body.description {
                row.description = d;
            }
            if body.allow_all_justifications {
                row.justifications = None;
            } else if body.allowed_justifications.is_some() {
                row.justifications = justifications_text(&body.allowed_justifications);
            }
            Ok(())
        })
        .await?;
    view(&ctx, &k, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/rotate", tag = "keys", request_body = RotateKey,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id"), IfMatch),
    responses((status = 200, body = Key), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn rotate(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    IfMatch(gen): IfMatch,
    Body(body): Body<RotateKey>,
) -> HandlerResult<Tagged<Key>> {
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.rotate").await?;
    let k = ctx
        .state
        .kms
        .key_rotate(&k, gen, body.external_key_id.as_deref())
        .await?;
    ctx.record_detail("key_version", &k.primary_version.to_string());
    view(&ctx, &k, StatusCode::OK).await
}

/// Moves a key between states, refusing moves that make no sense.
async fn transition(
    ctx: &Ctx,
    project: &str,
    key: &str,
    gen: Option<i64>,
    action: &'static str,
    apply: impl FnOnce(&mut KeyRow) -> Result<(), ApiError>,
) -> HandlerResult<Tagged<Key>> {
    let (_, k) = authorized_key(ctx, project, key, action).await?;
    let k = ctx.state.kms.key_update(&k.id, gen, apply).await?;
    view(ctx, &k, StatusCode::OK).await
}

fn state_error(k: &KeyRow, wanted: &str) -> ApiError {
    ApiError::conflict(
        "invalid_key_state",
        format!("key {:?} is {}; it must be {wanted}", k.name, k.state),
    )
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/disable", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id"), IfMatch),
    responses((status = 200, body = Key), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn disable(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    IfMatch(gen): IfMatch,
) -> HandlerResult<Tagged<Key>> {
    transition(&ctx, &project, &key, gen, "kms.disable", |k| {
        if k.state != KeyState::Enabled.as_str() {
            return Err(state_error(k, "enabled"));
        }
        k.state = KeyState::Disabled.as_str().into();
        Ok(())
    })
    .await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/enable", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id"), IfMatch),
    responses((status = 200, body = Key), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn enable(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    IfMatch(gen): IfMatch,
) -> HandlerResult<Tagged<Key>> {
    transition(&ctx, &project, &key, gen, "kms.enable", |k| {
        if k.state != KeyState::Disabled.as_str() {
            return Err(state_error(k, "disabled"));
        }
        k.state = KeyState::Enabled.as_str().into();
        Ok(())
    })
    .await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/schedule-destruction", tag = "keys", request_body = ScheduleDestruction,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id"), IfMatch),
    responses((status = 200, body = Key), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn schedule_destruction(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    IfMatch(gen): IfMatch,
    Body(body): Body<ScheduleDestruction>,
) -> HandlerResult<Tagged<Key>> {
    let days = body.days.unwrap_or(7);
    if !(1..=365).contains(&days) {
        return Err(ApiError::bad_request(
            "invalid_waiting_period",
            "the waiting period is 1 to 365 days (use destroy with now=true to destroy at once)",
        )
        .into());
    }
    transition(&ctx, &project, &key, gen, "kms.schedule_destruction", |k| {
        if k.state != KeyState::Enabled.as_str() && k.state != KeyState::Disabled.as_str() {
            return Err(state_error(k, "enabled or disabled"));
        }
        k.state = KeyState::DestroyScheduled.as_str().into();
        k.destroy_at = Some(now_ms() + i64::from(days) * 86_400_000);
        Ok(())
    })
    .await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/cancel-destruction", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id"), IfMatch),
    responses((status = 200, body = Key), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel_destruction(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    IfMatch(gen): IfMatch,
) -> HandlerResult<Tagged<Key>> {
    transition(&ctx, &project, &key, gen, "kms.cancel_destruction", |k| {
        if k.state != KeyState::DestroyScheduled.as_str() {
            return Err(state_error(k, "scheduled for destruction"));
        }
        // A cancelled destruction leaves the key disabled: enabling it again
        // is a separate, deliberate step.
        k.state = KeyState::Disabled.as_str().into();
        k.destroy_at = None;
        Ok(())
    })
    .await
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyNow {
    /// The key's name, repeated as a confirmation.
    pub confirm: String,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/destroy", tag = "keys", request_body = DestroyNow,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id")),
    responses((status = 200, body = Key), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn destroy_now(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    Body(body): Body<DestroyNow>,
) -> HandlerResult<Tagged<Key>> {
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.destroy").await?;
    if !ctx.subject.mfa {
        return Err(ApiError::forbidden(
            "destroying a key at once needs a session opened with a second factor",
        )
        .with_code("mfa_required")
        .into());
    }
    if body.confirm != k.name {
        return Err(ApiError::bad_request(
            "confirmation_mismatch",
            format!("confirm with the key's name ({:?})", k.name),
        )
        .into());
    }
    if k.state == KeyState::Destroyed.as_str() {
        return Err(state_error(&k, "not destroyed yet").into());
    }
    let k = ctx.state.kms.key_destroy(&k.id).await?;
    view(&ctx, &k, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/rewrap", tag = "keys", request_body = RewrapRequest,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id")),
    responses((status = 200, body = RewrapProgress), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem)))]
pub async fn rewrap(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    Body(body): Body<RewrapRequest>,
) -> HandlerResult<Json<RewrapProgress>> {
    let limit = body.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit is 1 to 10000 data keys").into());
    }
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.rewrap").await?;
    let (rewrapped, remaining, _) = ctx.state.kms.rewrap(&k, limit).await?;
    ctx.record_detail("key_version", &k.primary_version.to_string());
    ctx.record_detail("justification", Justification::Rewrap.as_str());
    ctx.record_detail("rewrapped", &rewrapped.to_string());
    Ok(Json(RewrapProgress {
        rewrapped,
        remaining,
        primary_version: k.primary_version,
    }))
}

fn decode(field: &'static str, v: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(v)
        .map_err(|_| ApiError::bad_request("invalid_base64", format!("{field} must be base64")))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/encrypt", tag = "keys", request_body = EncryptRequest,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id")),
    responses((status = 200, body = EncryptResponse), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 503, body = Problem)))]
pub async fn encrypt(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    Body(body): Body<EncryptRequest>,
) -> HandlerResult<Json<EncryptResponse>> {
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.encrypt").await?;
    let pt = zeroize::Zeroizing::new(decode("plaintext", &body.plaintext)?);
    let aad = body.aad.as_deref().map(|a| decode("aad", a)).transpose()?;
    let (ct, used) = ctx
        .state
        .kms
        .encrypt(
            &k,
            aad.as_deref().unwrap_or_default(),
            &pt,
            &ctx.purpose(Justification::TenantRequest),
        )
        .await?;
    ctx.record_use(&used);
    Ok(Json(EncryptResponse {
        ciphertext: B64.encode(ct),
        key_id: k.id,
        key_version: used.key_version,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/keys/{key}/decrypt", tag = "keys", request_body = DecryptRequest,
    params(("org" = String, Path, description = "Organization name or id"), ("project" = String, Path, description = "Project name or id"), ("key" = String, Path, description = "Key name or id")),
    responses((status = 200, body = DecryptResponse), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem)))]
pub async fn decrypt(
    ctx: Ctx,
    Path((_org, project, key)): KeyPath,
    Body(body): Body<DecryptRequest>,
) -> HandlerResult<Json<DecryptResponse>> {
    let (_, k) = authorized_key(&ctx, &project, &key, "kms.decrypt").await?;
    let ct = decode("ciphertext", &body.ciphertext)?;
    let aad = body.aad.as_deref().map(|a| decode("aad", a)).transpose()?;
    let (pt, used) = ctx
        .state
        .kms
        .decrypt(
            &k,
            aad.as_deref().unwrap_or_default(),
            &ct,
            &ctx.purpose(Justification::TenantRequest),
        )
        .await?;
    ctx.record_use(&used);
    Ok(Json(DecryptResponse {
        plaintext: B64.encode(&pt),
        key_version: used.key_version,
    }))
}
