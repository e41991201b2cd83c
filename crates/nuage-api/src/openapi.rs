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

/// Adds what every operation of a kind shares: `Idempotency-Key` on each
/// mutation.
pub fn finish(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            op.parameters.get_or_insert_with(Vec::new).push(header(
                "Idempotency-Key",
                "Retries with the same key get the first answer (kept 24 h); reusing a key \
                 for another request is a 422",
            ));
        }
    }
    api
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
