//! Reading the audit log of one's organization: entries, signed
//! checkpoints, inclusion and consistency proofs, and a verifiable export.
//! The helpers also serve the operator realm's platform log.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header;
use nuage_core::model::{AuditCheckpoint, AuditEntry, AuditProof, AuditPublicKey, AuditRecord};
use nuage_core::page::{decode_token, encode_token, Page, MAX_LIMIT};
use nuage_core::time::parse_rfc3339;
use nuage_core::ApiError;
use nuage_store::AuditFilter;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ctx::{Ctx, Q};
use crate::problem::{HandlerResult, Problem};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Entries before this RFC 3339 time.
    pub until: Option<String>,
    /// Principal id.
    pub principal: Option<String>,
    pub action: Option<String>,
    /// `allow`, `deny`, `error` or `none`.
    pub decision: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

fn time(field: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_ref()
        .map(|s| {
            parse_rfc3339(s).ok_or_else(|| {
                ApiError::bad_request("invalid_time", format!("{field} must be an RFC 3339 time"))
            })
        })
        .transpose()
}

fn filter(q: &AuditQuery) -> Result<AuditFilter, ApiError> {
    if let Some(d) = &q.decision {
        if !["allow", "deny", "error", "none"].contains(&d.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_decision",
                "decision is allow, deny, error or none",
            ));
        }
    }
    Ok(AuditFilter {
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        principal: q.principal.clone(),
        action: q.action.clone(),
        decision: q.decision.clone(),
        from_index: None,
    })
}

pub(crate) async fn entries(
    ctx: &Ctx,
    log_id: &str,
    q: AuditQuery,
) -> Result<Page<AuditEntry>, ApiError> {
    let f = filter(&q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after =
        match &q.page_token {
            Some(t) => Some(decode_token(t)?.parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid_page_token", "page_token is not valid")
            })?),
            None => None,
        };
    let rows = ctx.state.audit.list(log_id, &f, after, limit).await?;
    let items = rows
        .into_iter()
        .map(|r| {
            let record = match &r.body {
                Some(b) => Some(serde_json::from_str::<AuditRecord>(b).map_err(|e| {
                    ApiError::internal(format!("audit entry {} unreadable: {e}", r.index))
                })?),
                None => None,
            };
            Ok(AuditEntry {
                index: r.index,
                leaf_hash: r.leaf_hash,
                record,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let page = Page::from_rows(items, limit, |e| e.index.to_string());
    Ok(Page {
        next_page_token: page.next_page_token.map(|_| {
            encode_token(
                &page
                    .items
                    .last()
                    .map(|e| e.index)
                    .unwrap_or_default()
                    .to_string(),
            )
        }),
        items: page.items,
    })
}

/// Filters of an export (no paging: an export is one document).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    pub since: Option<String>,
    pub until: Option<String>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub decision: Option<String>,
}

impl From<ExportQuery> for AuditQuery {
    fn from(q: ExportQuery) -> Self {
        AuditQuery {
            since: q.since,
            until: q.until,
            principal: q.principal,
            action: q.action,
            decision: q.decision,
            limit: None,
            page_token: None,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckpointQuery {
    /// A past tree size; the newest checkpoint when absent.
    pub size: Option<i64>,
}

pub(crate) async fn checkpoint(
    ctx: &Ctx,
    log_id: &str,
    size: Option<i64>,
) -> Result<AuditCheckpoint, ApiError> {
    let cp = match size {
        Some(s) => ctx.state.audit.checkpoint_at(log_id, s).await?,
        None => ctx.state.audit.latest_checkpoint(log_id).await?,
    };
    cp.ok_or_else(|| {
        ApiError::not_found(
            "checkpoint",
            &size.map(|s| s.to_string()).unwrap_or("latest".into()),
        )
    })
}

pub(crate) async fn sign_now(ctx: &Ctx, log_id: &str) -> Result<AuditCheckpoint, ApiError> {
    ctx.state
        .audit
        .checkpoint_now(log_id)
        .await?
        .ok_or_else(|| ApiError::not_found("audit log", log_id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    pub index: u64,
    pub size: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    pub from: u64,
    pub to: u64,
}

fn proof(size: u64, hashes: Vec<[u8; 32]>) -> AuditProof {
    AuditProof {
        size: size as i64,
        hashes: hashes.iter().map(hex::encode).collect(),
    }
}

pub(crate) async fn inclusion(
    ctx: &Ctx,
    log_id: &str,
    q: InclusionQuery,
) -> Result<AuditProof, ApiError> {
    Ok(proof(
        q.size,
        ctx.state
            .audit
            .inclusion_proof(log_id, q.index, q.size)
            .await?,
    ))
}

pub(crate) async fn consistency(
    ctx: &Ctx,
    log_id: &str,
    q: ConsistencyQuery,
) -> Result<AuditProof, ApiError> {
    Ok(proof(
        q.to,
        ctx.state
            .audit
            .consistency_proof(log_id, q.from, q.to)
            .await?,
    ))
}

pub(crate) async fn export_log(
    ctx: &Ctx,
    log_id: &str,
    q: ExportQuery,
) -> Result<Response, ApiError> {
    let f = filter(&q.into())?;
    let body = ctx.state.audit.export(log_id, &f).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn log_id(ctx: &Ctx) -> Result<String, ApiError> {
    Ok(ctx.org()?.id.clone())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/audit/entries", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id"), AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = Problem)))]
pub async fn list_entries(ctx: Ctx, Q(q): Q<AuditQuery>) -> HandlerResult<Json<Page<AuditEntry>>> {
    ctx.authorize("audit.read", &ctx.org_target()?).await?;
    Ok(Json(entries(&ctx, &log_id(&ctx)?, q).await?))
}

/// The newest signed checkpoint (or the one at `size`).
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/checkpoint", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id"), CheckpointQuery),
    responses((status = 200, body = AuditCheckpoint), (status = 404, body = Problem)))]
pub async fn get_checkpoint(
    ctx: Ctx,
    Q(q): Q<CheckpointQuery>,
) -> HandlerResult<Json<AuditCheckpoint>> {
    ctx.authorize("audit.read", &ctx.org_target()?).await?;
    Ok(Json(checkpoint(&ctx, &log_id(&ctx)?, q.size).await?))
}

/// Sign a checkpoint of the log as it is now.
#[utoipa::path(post, path = "/v1/orgs/{org}/audit/checkpoint", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = AuditCheckpoint)))]
pub async fn create_checkpoint(ctx: Ctx) -> HandlerResult<Json<AuditCheckpoint>> {
    ctx.authorize("audit.checkpoint", &ctx.org_target()?)
        .await?;
    Ok(Json(sign_now(&ctx, &log_id(&ctx)?).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/audit/proofs/inclusion", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id"), InclusionQuery),
    responses((status = 200, body = AuditProof), (status = 400, body = Problem)))]
pub async fn inclusion_proof(ctx: Ctx, Q(q): Q<InclusionQuery>) -> HandlerResult<Json<AuditProof>> {
    ctx.authorize("audit.read", &ctx.org_target()?).await?;
    Ok(Json(inclusion(&ctx, &log_id(&ctx)?, q).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/audit/proofs/consistency", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id"), ConsistencyQuery),
    responses((status = 200, body = AuditProof), (status = 400, body = Problem)))]
pub async fn consistency_proof(
    ctx: Ctx,
    Q(q): Q<ConsistencyQuery>,
) -> HandlerResult<Json<AuditProof>> {
    ctx.authorize("audit.read", &ctx.org_target()?).await?;
    Ok(Json(consistency(&ctx, &log_id(&ctx)?, q).await?))
}

/// JSON Lines: a header with the signed checkpoint, then each entry with its inclusion proof.
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/export", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id"), ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String)))]
pub async fn export(ctx: Ctx, Q(q): Q<ExportQuery>) -> HandlerResult<Response> {
    ctx.authorize("audit.read", &ctx.org_target()?).await?;
    Ok(export_log(&ctx, &log_id(&ctx)?, q).await?)
}

/// The key that signs checkpoints, to keep for offline verification.
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/public-key", tag = "audit",
    params(("org" = String, Path, description = "Organization name or id")),
    responses((status = 200, body = AuditPublicKey)))]
pub async fn public_key(ctx: Ctx) -> HandlerResult<Json<AuditPublicKey>> {
    ctx.authorize("audit.read", &ctx.org_target()?).await?;
    Ok(Json(AuditPublicKey {
        verifier_key: ctx.state.audit.verifier_key(),
    }))
}
