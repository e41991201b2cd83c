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
