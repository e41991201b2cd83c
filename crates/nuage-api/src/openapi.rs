//! OpenAPI 3.1 documents, generated from the handlers' annotations. The
//! committed copies under `openapi/` are checked against these by a test,
//! so the published contract cannot drift from the code.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::problem::Problem;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        api.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nuage API",
        version = "1",
        description = "The tenant API of nuage, a sovereign cloud platform. Errors are RFC 9457 \
            problems with a stable `code`; lists use cursor pagination (`limit`, `page_token`); \
            mutations honour `Idempotency-Key`; updates honour `If-Match` with the resource ETag."
    ),
    components(schemas(Problem)),
    modifiers(&Bearer)
)]
pub struct TenantDoc;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nuage operator API",
        version = "1",
        description = "The operator realm of nuage, and the routes `nuage agent` calls with a node credential (tag agent), served on the admin listener only."
    ),
    components(schemas(Problem)),
    modifiers(&Bearer)
)]
pub struct AdminDoc;

/// Pretty JSON of a document, as committed in the repository.
pub fn to_json(api: &utoipa::openapi::OpenApi) -> String {
    let mut s = api.to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

fn header(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// What the generated document leaves out, added in one place rather than
/// on each route, so that no route can forget it: the problems each
/// operation can answer (see [`errors`]), `Idempotency-Key` on mutations,
/// which operations need no credential, and the input limits the server
/// enforces (see [`limits`]). `public` holds the paths served without a
/// credential.
pub fn finish(
    mut api: utoipa::openapi::OpenApi,
    public: &utoipa::openapi::OpenApi,
) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::path::ParameterIn;
    let components = api.components.get_or_insert_with(Default::default);
    for (status, name, description) in ERRORS {
        components.responses.insert(
            name.to_string(),
            problem_response(status, description).into(),
        );
    }
    limits(components);
    api.info.description = Some(format!(
        "{} {BODY_LIMIT}",
        api.info.description.take().unwrap_or_default()
    ));
    for (path, item) in api.paths.paths.iter_mut() {
        let is_public = public.paths.paths.contains_key(path);
        let mutations = [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in mutations.into_iter().flatten() {
            op.parameters.get_or_insert_with(Vec::new).push(header(
                "Idempotency-Key",
                "Retries with the same key get the first answer (kept 24 h); reusing a key \
                 for another request is a 422",
            ));
            errors(op, path, is_public, true);
        }
        for op in [&mut item.get, &mut item.head, &mut item.options]
            .into_iter()
            .flatten()
        {
            errors(op, path, is_public, false);
        }
        let all = [
            &mut item.get,
            &mut item.head,
            &mut item.options,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in all.into_iter().flatten() {
            if is_public {
                // Served without a credential (the document's default is
                // the bearer token).
                op.security = Some(Vec::new());
            }
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "limit" && p.parameter_in == ParameterIn::Query {
                    if let Some(utoipa::openapi::RefOr::T(schema)) = &mut p.schema {
                        bound(schema, 1, MAX_LIMIT);
                    }
                }
            }
        }
    }
    api
}

/// Said once in the document's description and in every 413.
const BODY_LIMIT: &str = "Request bodies are limited to 1 MiB by default (the server's \
    `--max-body-bytes`): a larger one is answered 413 `body_too_large`.";

const MAX_LIMIT: usize = nuage_core::page::MAX_LIMIT as usize;

/// The shared problem responses: status, component name, description.
const ERRORS: [(u16, &str, &str); 12] = [
    (
        400,
        "BadRequest",
        "Invalid input (body, query or path): `code` says which",
    ),
    (
        401,
        "Unauthorized",
        "Missing, invalid or expired credential",
    ),
    (
        403,
        "Forbidden",
        "The credential does not allow this action here",
    ),
    (
        404,
        "NotFound",
        "No such resource (or not visible to the caller), or no such route",
    ),
    (
        409,
        "Conflict",
        "Conflicts with the current state (exists already, not empty, quota)",
    ),
    (
        412,
        "PreconditionFailed",
        "`If-Match` does not match the resource's ETag",
    ),
    (413, "PayloadTooLarge", BODY_LIMIT),
    (
        415,
        "UnsupportedMediaType",
        "The body must be sent as `Content-Type: application/json`",
    ),
    (
        422,
        "Unprocessable",
        "`Idempotency-Key` reused for a different request",
    ),
    (
        429,
        "TooManyRequests",
        "Too many failed logins: the account is locked for `Retry-After` seconds",
    ),
    (
        500,
        "Internal",
        "Internal error (the `request_id` locates it in the logs)",
    ),
    (
        503,
        "Unavailable",
        "The server is sealed (an operator must unseal it): retry after `Retry-After` seconds",
    ),
];

/// Password logins, which lock an account after repeated failures (429).
const LOCKOUT: &[&str] = &["/v1/login", "/admin/v1/login"];

fn is_problem(c: &utoipa::openapi::Content) -> bool {
    let problem = "#/components/schemas/Problem";
    matches!(&c.schema, Some(utoipa::openapi::RefOr::Ref(at)) if at.ref_location == problem)
}

fn problem_content() -> utoipa::openapi::Content {
    utoipa::openapi::ContentBuilder::new()
        .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
        .build()
}

fn problem_response(status: u16, description: &str) -> utoipa::openapi::Response {
    let mut r = utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content(crate::problem::CONTENT_TYPE, problem_content());
    if status == 429 || status == 503 {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let mut h = utoipa::openapi::Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        h.description = Some("Seconds to wait before retrying".to_string());
        r = r.header("Retry-After", h);
    }
    r.build()
}

/// Adds to `op` every problem it can answer that its annotation does not
/// name: 400 (any input), 401 and 403 (unless public), 404 (a path with a
/// name or id in it), 409, 413 and 422 (mutations: conflicts, the body
/// limit, `Idempotency-Key` reuse), 412 (with `If-Match`), 415 (a JSON
/// body), 429 (password logins), 500, and 503 (sealed). A problem the
/// annotation names keeps its description, as `application/problem+json`.
fn errors(op: &mut utoipa::openapi::path::Operation, path: &str, public: bool, mutation: bool) {
    use utoipa::openapi::{Ref, RefOr};
    let if_match = op.parameters.iter().flatten().any(|p| p.name == "If-Match");
    let json_body = op
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    for (status, name, _) in ERRORS {
        let applies = match status {
            400 | 500 => true,
            401 | 403 => !public,
            404 => path.contains('{'),
            409 | 413 | 422 => mutation,
            412 => if_match,
            415 => json_body,
            429 => LOCKOUT.contains(&path),
            503 => !crate::routes::seal::OPEN_WHILE_SEALED.contains(&path),
            _ => false,
        };
        let key = status.to_string();
        if applies && !op.responses.responses.contains_key(&key) {
            op.responses
                .responses
                .insert(key, RefOr::Ref(Ref::from_response_name(name)));
        }
    }
    // The problems the annotation names: utoipa writes `body = Problem` as
    // application/json, and no content for a status named without a body.
    for (status, r) in op.responses.responses.iter_mut() {
        let RefOr::T(r) = r else { continue };
        if status.parse::<u16>().map_or(true, |s| s < 400) {
            continue;
        }
        if r.description.is_empty() {
            r.description = ERRORS
                .iter()
                .find(|(s, _, _)| s.to_string() == *status)
                .map_or("Error (see `code`)", |(_, _, d)| d)
                .to_string();
        }
        if r.content.get("application/json").is_some_and(is_problem) {
            if let Some(c) = r.content.shift_remove("application/json") {
                r.content
                    .insert(crate::problem::CONTENT_TYPE.to_string(), c);
            }
        } else if r.content.is_empty() {
            r.content
                .insert(crate::problem::CONTENT_TYPE.to_string(), problem_content());
        }
    }
}

/// The input limits the server checks, on the schemas it checks them on:
/// names are DNS labels (`nuage_core::name`), bucket names follow the S3
/// rules (`nuage_objects::names`).
fn limits(components: &mut utoipa::openapi::schema::Components) {
    use utoipa::openapi::schema::{Object, Schema, Type};
    use utoipa::openapi::RefOr;
    for (schema_name, schema) in components.schemas.iter_mut() {
        let RefOr::T(Schema::Object(object)) = schema else {
            continue;
        };
        let (pattern, min, max) = if schema_name == "CreateBucket" {
            (BUCKET_NAME, 3, nuage_core::name::MAX_LEN)
        } else if schema_name.starts_with("Create") || DNS_NAMED.contains(&schema_name.as_str()) {
            (DNS_LABEL, 1, nuage_core::name::MAX_LEN)
        } else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(name))) = object.properties.get_mut("name") {
            name.pattern = Some(pattern.to_string());
            name.min_length = Some(min);
            name.max_length = Some(max);
        }
    }
    // Project labels: at most 64, keys are DNS labels (`routes::projects`).
    for schema_name in ["CreateProject", "UpdateProject"] {
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema_name) else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(labels))) = object.properties.get_mut("labels") {
            labels.max_properties = Some(crate::routes::projects::MAX_LABELS);
            let mut key = Object::with_type(Type::String);
            key.pattern = Some(DNS_LABEL.to_string());
            key.max_length = Some(nuage_core::name::MAX_LEN);
            labels.property_names = Some(Box::new(Schema::Object(key)));
        }
    }
}

/// Request schemas, besides the `Create…` ones, whose `name` is a DNS label.
const DNS_NAMED: &[&str] = &["OwnerSpec"];

/// A DNS label: lowercase letters, digits and `-`, starting with a letter,
/// not ending with `-` (1–63 characters).
pub const DNS_LABEL: &str = "^[a-z]([a-z0-9-]*[a-z0-9])?$";

/// The characters and edges of an S3 bucket name (the other rules are in
/// the field's description).
const BUCKET_NAME: &str = "^[a-z0-9][a-z0-9.-]*[a-z0-9]$";

fn bound(schema: &mut utoipa::openapi::schema::Schema, min: usize, max: usize) {
    if let utoipa::openapi::schema::Schema::Object(o) = schema {
        o.minimum = Some(utoipa::Number::UInt(min));
        o.maximum = Some(utoipa::Number::UInt(max));
    }
}

/// `If-Match` as a documented parameter of the handlers that honour it.
impl utoipa::IntoParams for crate::ctx::IfMatch {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![header(
            "If-Match",
            "ETag (generation) the change applies to; 412 precondition_failed if the resource changed",
        )]
    }
}
