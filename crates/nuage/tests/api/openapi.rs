//! The committed OpenAPI documents are the published contract: they must
//! match what the code generates (`nuage openapi > openapi/nuage.json`).

#[test]
fn committed_openapi_documents_match_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi");
    for (file, api) in [
        ("nuage.json", nuage_api::routes::tenant_spec()),
        ("nuage-admin.json", nuage_api::routes::admin_spec()),
    ] {
        let committed = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        let generated = nuage_api::openapi::to_json(&api);
        assert!(
            committed == generated,
            "openapi/{file} is stale: regenerate it with `cargo run -q -- openapi{} > openapi/{file}`",
            if file.contains("admin") { " --admin" } else { "" }
        );
        let v: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
    }
}

#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let s = crate::common::Srv::start().await;
    let r = s
        .req(
            http::Method::GET,
            &format!("{}/v1/openapi.json", s.tenant),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        serde_json::to_value(nuage_api::routes::tenant_spec()).unwrap()
    );
    s.shutdown().await;
}

/// Every operation names the problems it can answer, each as an RFC 9457
/// `application/problem+json` body, and the inputs carry the limits the
/// server enforces: clients and fuzzers learn them from the documents.
#[test]
fn every_operation_documents_its_problems_and_inputs_their_limits() {
    use serde_json::{json, Value};
    let problem = |doc: &Value, r: &Value| -> bool {
        let r = match r["$ref"].as_str() {
            Some(at) => {
                let name = at.trim_start_matches("#/components/responses/");
                &doc["components"]["responses"][name]
            }
            None => r,
        };
        r["content"]["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem"
    };
    for (file, api) in [
        ("nuage.json", nuage_api::routes::tenant_spec()),
        ("nuage-admin.json", nuage_api::routes::admin_spec()),
    ] {
        let doc = serde_json::to_value(&api).unwrap();
        assert!(
            doc["info"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("1 MiB") && d.contains("413")),
            "{file}: the body limit is not in the description"
        );
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let mutation = match method.as_str() {
                    "post" | "put" | "patch" | "delete" => true,
                    "get" | "head" | "options" => false,
                    _ => continue,
                };
                operations += 1;
                let at = format!("{file}: {method} {path}");
                let public = op["security"] == json!([]);
                let mut expected = vec!["400", "500"];
                if !public {
                    expected.extend(["401", "403"]);
                }
                if path.contains('{') {
                    expected.push("404");
                }
                if mutation {
                    expected.extend(["409", "413", "422"]);
                }
                if path != "/admin/v1/seal-status" && path != "/admin/v1/unseal" {
                    expected.push("503");
                }
                let responses = op["responses"].as_object().unwrap();
                for code in expected {
                    assert!(responses.contains_key(code), "{at}: no {code}");
                }
                for (code, r) in responses {
                    if code.as_str() >= "400" {
                        assert!(problem(&doc, r), "{at}: {code} is not a problem+json");
                    }
                }
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["name"] == "limit" && p["in"] == "query" {
                        assert_eq!(
                            (&p["schema"]["minimum"], &p["schema"]["maximum"]),
                            (&json!(1), &json!(1000)),
                            "{at}: limit"
                        );
                    }
                }
            }
        }
        assert!(operations > 20, "{file}: {operations} operations");
    }

    let tenant = serde_json::to_value(nuage_api::routes::tenant_spec()).unwrap();
    let admin = serde_json::to_value(nuage_api::routes::admin_spec()).unwrap();
    let login = &tenant["paths"]["/v1/login"]["post"];
    assert_eq!(login["security"], json!([]), "login needs no credential");
    assert!(login["responses"]["429"].is_object(), "a locked account");
    let name = |doc: &Value, schema: &str| {
        doc["components"]["schemas"][schema]["properties"]["name"].clone()
    };
    let label = json!({"pattern": nuage_api::openapi::DNS_LABEL, "minLength": 1, "maxLength": 63});
    for (doc, schema) in [
        (&tenant, "CreateProject"),
        (&tenant, "CreateUser"),
        (&tenant, "CreateInstance"),
        (&admin, "CreateOrg"),
        (&admin, "OwnerSpec"),
    ] {
        let n = name(doc, schema);
        for k in ["pattern", "minLength", "maxLength"] {
            assert_eq!(n[k], label[k], "{schema}.name {k}");
        }
    }
    let bucket = name(&tenant, "CreateBucket");
    assert_eq!(
        (&bucket["minLength"], &bucket["maxLength"]),
        (&json!(3), &json!(63))
    );
    // The server's rule (nuage_core::name): a letter first, no '-' last.
    assert_eq!(
        nuage_api::openapi::DNS_LABEL,
        "^[a-z]([a-z0-9-]*[a-z0-9])?$"
    );
}
