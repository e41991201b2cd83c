//! Route tables of the two listeners. Each module holds one family of
//! resources; `tenant` and `admin` assemble them with the pipeline layers.

pub mod access;
pub mod access_keys;
pub mod admin;
pub mod agent;
pub mod audit;
pub mod auth;
pub mod buckets;
pub mod groups;
pub mod health;
pub mod images;
pub mod instance_types;
pub mod instances;
pub mod key_managers;
pub mod keys;
pub mod nodes;
pub mod oidc;
pub mod orgs;
pub mod principals;
pub mod projects;
pub mod seal;
pub mod snapshots;
pub mod tokens;
pub mod volumes;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::Router;
use nuage_core::ApiError;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ctx::{authenticate, authenticate_node, org_guard};
use crate::idempotency::idempotency;
use crate::observe::observe;
use crate::openapi::{AdminDoc, TenantDoc};
use crate::problem::Failure;
use crate::state::AppState;

fn tenant_org_scoped() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(orgs::get_org, orgs::update_org))
        .routes(routes!(
            nodes::get_accepted_labels,
            nodes::set_accepted_labels
        ))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(projects::get, projects::update, projects::delete))
        .routes(routes!(buckets::list, buckets::create))
        .routes(routes!(buckets::get, buckets::update, buckets::delete))
        .routes(routes!(buckets::project_storage))
        .routes(routes!(images::list, images::create))
        .routes(routes!(images::get, images::update, images::delete))
        .routes(routes!(images::upload))
        .routes(routes!(volumes::list, volumes::create))
        .routes(routes!(volumes::get, volumes::update, volumes::delete))
        .routes(routes!(snapshots::list, snapshots::create))
        .routes(routes!(snapshots::get, snapshots::delete))
        .routes(routes!(instances::list, instances::create))
        .routes(routes!(instances::get, instances::delete))
        .routes(routes!(instances::start))
        .routes(routes!(instances::stop))
        .routes(routes!(instances::reboot))
        .routes(routes!(instances::list_volumes, instances::attach_volume))
        .routes(routes!(instances::detach_volume))
        .routes(routes!(instances::console_log))
        .routes(routes!(instances::console))
        .routes(routes!(principals::list_users, principals::create_user))
        .routes(routes!(
            principals::get_user,
            principals::update_user,
            principals::delete_user
        ))
        .routes(routes!(principals::set_user_password))
        .routes(routes!(principals::reset_user_mfa))
        .routes(routes!(
            principals::list_service_accounts,
            principals::create_service_account
        ))
        .routes(routes!(
            principals::get_service_account,
            principals::update_service_account,
            principals::delete_service_account
        ))
        .routes(routes!(groups::list, groups::create))
        .routes(routes!(groups::get, groups::update, groups::delete))
        .routes(routes!(groups::list_members, groups::add_member))
        .routes(routes!(groups::remove_member))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::get, tokens::revoke))
        .routes(routes!(access_keys::list, access_keys::create))
        .routes(routes!(access_keys::get, access_keys::revoke))
        .routes(routes!(access::list_roles))
        .routes(routes!(
            access::list_org_bindings,
            access::create_org_binding
        ))
        .routes(routes!(
            access::list_project_bindings,
            access::create_project_binding
        ))
        .routes(routes!(access::get_binding, access::delete_binding))
        .routes(routes!(access::list_policies, access::create_policy))
        .routes(routes!(
            access::get_policy,
            access::update_policy,
            access::delete_policy
        ))
        .routes(routes!(access::test_policy))
        .routes(routes!(audit::list_entries))
        .routes(routes!(audit::get_checkpoint, audit::create_checkpoint))
        .routes(routes!(audit::inclusion_proof))
        .routes(routes!(audit::consistency_proof))
        .routes(routes!(audit::export))
        .routes(routes!(audit::public_key))
        .routes(routes!(
            oidc::get_config,
            oidc::set_config,
            oidc::delete_config
        ))
        .routes(routes!(key_managers::list, key_managers::create))
        .routes(routes!(key_managers::get, key_managers::delete))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get, keys::update))
        .routes(routes!(keys::rotate))
        .routes(routes!(keys::disable))
        .routes(routes!(keys::enable))
        .routes(routes!(keys::schedule_destruction))
        .routes(routes!(keys::cancel_destruction))
        .routes(routes!(keys::destroy_now))
        .routes(routes!(keys::rewrap))
        .routes(routes!(keys::encrypt))
        .routes(routes!(keys::decrypt))
}

fn tenant_authenticated() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(auth::me))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::enroll_mfa))
        .routes(routes!(auth::confirm_mfa))
        .routes(routes!(orgs::list_orgs))
        .routes(routes!(instance_types::list))
}

fn tenant_public() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(TenantDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(oidc::start))
        .routes(routes!(oidc::finish))
}

/// The tenant OpenAPI document, without starting anything.
pub fn tenant_spec() -> utoipa::openapi::OpenApi {
    crate::openapi::finish(
        tenant_public()
            .merge(tenant_authenticated().merge(tenant_org_scoped()))
            .split_for_parts()
            .1,
        &tenant_public().split_for_parts().1,
    )
}

/// The tenant API and its OpenAPI document.
pub fn tenant(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let org_scoped = tenant_org_scoped().route_layer(from_fn(org_guard));
    let authenticated = tenant_authenticated()
        .merge(org_scoped)
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    let (router, api) = tenant_public().merge(authenticated).split_for_parts();
    let api = crate::openapi::finish(api, &tenant_public().split_for_parts().1);
    let spec = api.clone();
    let router = router
        .route(
            "/v1/openapi.json",
            get(move || async move { axum::Json(spec) }),
        )
        .merge(health::router());
    (finish(router, state), api)
}

fn admin_authenticated() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin::me))
        .routes(routes!(admin::change_password))
        .routes(routes!(admin::enroll_mfa))
        .routes(routes!(admin::confirm_mfa))
        .routes(routes!(admin::list_orgs, admin::create_org))
        .routes(routes!(
            admin::get_org,
            admin::update_org,
            admin::delete_org
        ))
        .routes(routes!(admin::set_project_storage_quota))
        .routes(routes!(admin::list_operators, admin::create_operator))
        .routes(routes!(admin::delete_operator))
        .routes(routes!(admin::list_tokens, admin::create_token))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::list_audit))
        .routes(routes!(admin::get_checkpoint, admin::create_checkpoint))
        .routes(routes!(admin::inclusion_proof))
        .routes(routes!(admin::consistency_proof))
        .routes(routes!(admin::export_audit))
        .routes(routes!(admin::public_key))
        .routes(routes!(nodes::list_nodes, nodes::enroll_node))
        .routes(routes!(nodes::update_node, nodes::delete_node))
        .routes(routes!(nodes::rotate_node_credential))
        .routes(routes!(nodes::schedule_node))
        .routes(routes!(nodes::unschedule_node))
        .routes(routes!(nodes::label_node))
        .routes(routes!(instance_types::admin_list))
        .routes(routes!(instance_types::put, instance_types::delete))
}

fn admin_public() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(AdminDoc::openapi())
        .routes(routes!(admin::login))
        .routes(routes!(seal::seal_status))
        .routes(routes!(seal::unseal))
}

/// What `nuage agent` calls, on the admin listener, with a node credential.
fn agent_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(agent::report_node))
        .routes(routes!(agent::node_challenge))
        .routes(routes!(agent::work))
        .routes(routes!(agent::report_instance))
        .routes(routes!(agent::settle_attachment))
        .routes(routes!(agent::instance_keys))
        .routes(routes!(agent::task_step))
        .routes(routes!(agent::console_relay))
}

/// The operator OpenAPI document, without starting anything.
pub fn admin_spec() -> utoipa::openapi::OpenApi {
    crate::openapi::finish(
        admin_public()
            .merge(admin_authenticated())
            .merge(agent_routes())
            .split_for_parts()
            .1,
        &admin_public().split_for_parts().1,
    )
}

/// The operator API and its OpenAPI document.
pub fn admin(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let authenticated =
        admin_authenticated().route_layer(from_fn_with_state(state.clone(), authenticate));
    let agents = agent_routes().route_layer(from_fn_with_state(state.clone(), authenticate_node));
    let (router, api) = admin_public()
        .merge(authenticated)
        .merge(agents)
        .split_for_parts();
    let api = crate::openapi::finish(api, &admin_public().split_for_parts().1);
    let spec = api.clone();
    let metrics = state.metrics.clone();
    let router = router
        .route(
            "/admin/v1/openapi.json",
            get(move || async move { axum::Json(spec) }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }),
        )
        .merge(health::router());
    (finish(router, state), api)
}

fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .fallback(|| async { Failure(ApiError::not_found("route", "this path")) })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), idempotency))
        .layer(from_fn_with_state(state.clone(), seal::sealed_guard))
        .layer(from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
