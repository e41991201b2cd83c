//! External key managers an organization registers to hold its keys outside
//! nuage (KMIP over mutual TLS, or OpenBao/Vault Transit). Their credential
//! is sealed under the platform root key and never shown again.

use axum::extract::Path;
use axum::Json;
use http::StatusCode;
use nuage_core::model::kms::{CreateKeyManager, KeyManager, KeyManagerKind};
use nuage_core::page::{Page, PageParams};
use nuage_core::{name, ApiError};

use crate::ctx::{Body, Ctx, IfMatch, Tagged, Q};
use crate::problem::{HandlerResult, Problem};

const MAX_PEM: usize = 64 * 1024;

fn check_pem(field: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_PEM || !v.contains("-----BEGIN ") {
        return Err(ApiError::bad_request(
            "invalid_key_manager",
            format!("{field} must be PEM text under 64 KiB"),
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/key-managers", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), PageParams),
    responses((status = 200, body = Page<KeyManager>), (status = 404, body = Problem)))]
pub async fn list(ctx: Ctx, Q(page): Q<PageParams>) -> HandlerResult<Json<Page<KeyManager>>> {
    ctx.authorize("key_manager.list", &ctx.org_target()?)
        .await?;
    let page = page.validate()?;
    let rows = ctx
        .state
        .store
        .kms_manager_list(&ctx.org()?.id, &page)
        .await?;
    Ok(Json(Page {
        items: rows
            .items
            .iter()
            .map(nuage_kms::Kms::manager_view)
            .collect(),
        next_page_token: rows.next_page_token,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/key-managers", tag = "keys", request_body = CreateKeyManager,
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 201, body = KeyManager), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    ctx: Ctx,
    Body(body): Body<CreateKeyManager>,
) -> HandlerResult<Tagged<KeyManager>> {
    ctx.authorize("key_manager.create", &ctx.org_target()?)
        .await?;
    name::validate("key manager", &body.name)?;
    let invalid = |d: &str| ApiError::bad_request("invalid_key_manager", d.to_string());
    let (config, secret) = match body.kind {
        KeyManagerKind::Kmip => {
            let ep = body
                .kmip
                .as_ref()
                .ok_or_else(|| invalid("kind kmip needs the kmip settings"))?;
            let key = body
                .kmip_client_key_pem
                .clone()
                .ok_or_else(|| invalid("kind kmip needs kmip_client_key_pem"))?;
            if body.transit.is_some() || body.transit_token.is_some() {
                return Err(invalid("transit settings given for a kmip key manager").into());
            }
            if ep.host.is_empty() || ep.host.len() > 253 || ep.port == 0 {
                return Err(invalid("kmip host and port are required").into());
            }
            check_pem("ca_pem", &ep.ca_pem)?;
            check_pem("client_cert_pem", &ep.client_cert_pem)?;
            check_pem("kmip_client_key_pem", &key)?;
            (
                serde_json::to_string(ep).map_err(|e| ApiError::internal(e.to_string()))?,
                key,
            )
        }
        KeyManagerKind::Transit => {
            let ep = body
                .transit
                .as_ref()
                .ok_or_else(|| invalid("kind transit needs the transit settings"))?;
            let token = body
                .transit_token
                .clone()
                .ok_or_else(|| invalid("kind transit needs transit_token"))?;
            if body.kmip.is_some() || body.kmip_client_key_pem.is_some() {
                return Err(invalid("kmip settings given for a transit key manager").into());
            }
            if token.is_empty() || token.len() > 4096 {
                return Err(invalid("transit_token must have 1 to 4096 characters").into());
            }
            if let Some(ca) = &ep.ca_pem {
                check_pem("ca_pem", ca)?;
            }
            (
                serde_json::to_string(ep).map_err(|e| ApiError::internal(e.to_string()))?,
                token,
            )
        }
    };
    let secret = zeroize::Zeroizing::new(secret);
    let row = ctx
        .state
        .kms
        .manager_create(&ctx.org()?.id, &body.name, body.kind, config, &secret)
        .await?;
    Ok(Tagged(
        StatusCode::CREATED,
        nuage_kms::Kms::manager_view(&row),
        row.generation,
    ))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/key-managers/{manager}", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("manager" = String, Path, description = "Key manager name or id")),
    responses((status = 200, body = KeyManager), (status = 404, body = Problem)))]
pub async fn get(
    ctx: Ctx,
    Path((_org, manager)): Path<(String, String)>,
) -> HandlerResult<Tagged<KeyManager>> {
    ctx.authorize("key_manager.get", &ctx.org_target()?).await?;
    let row = ctx
        .state
        .store
        .kms_manager_get(&ctx.org()?.id, &manager)
        .await?
        .ok_or_else(|| ApiError::not_found("key manager", &manager))?;
    Ok(Tagged(
        StatusCode::OK,
        nuage_kms::Kms::manager_view(&row),
        row.generation,
    ))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/key-managers/{manager}", tag = "keys",
    params(("org" = String, Path, description = "Organization name or id"), ("manager" = String, Path, description = "Key manager name or id"), IfMatch),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    ctx: Ctx,
    Path((_org, manager)): Path<(String, String)>,
    IfMatch(gen): IfMatch,
) -> HandlerResult<StatusCode> {
    ctx.authorize("key_manager.delete", &ctx.org_target()?)
        .await?;
    let org = ctx.org()?;
    let row = ctx
        .state
        .store
        .kms_manager_get(&org.id, &manager)
        .await?
        .ok_or_else(|| ApiError::not_found("key manager", &manager))?;
    ctx.state
        .store
        .kms_manager_delete(&org.id, &row.id, gen)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
