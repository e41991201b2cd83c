//! Tenant isolation, route by route: for every route of the OpenAPI
//! document under `/v1/orgs/{org}`, a principal of organization B gets a
//! 404 — never a 403, never data — for organization A's resources. The
//! route list comes from the spec, so a new route is covered without a new
//! test.

use std::collections::HashMap;

use http::Method;
use serde_json::json;

use crate::common::Srv;

#[tokio::test]
async fn every_org_route_answers_404_to_another_tenant() {
    let s = Srv::start().await;
    let a = s.org("alpha").await;
    let b = s.org("bravo").await;
    // Give A one of everything, so each path names a real resource of A.
    let mk = |path: &str, body: serde_json::Value| {
        let a = a.clone();
        let path = path.to_string();
        let s = &s;
        async move {
            let r = s.t(Method::POST, &path, &a, Some(body)).await;
            assert!(r.status == 201 || r.status == 204, "{path}: {}", r.text);
            r
        }
    };
    mk("/v1/orgs/alpha/projects", json!({"name": "web"})).await;
    mk("/v1/orgs/alpha/users", json!({"name": "ursula"})).await;
    mk("/v1/orgs/alpha/service-accounts", json!({"name": "ci"})).await;
    mk("/v1/orgs/alpha/groups", json!({"name": "ops"})).await;
    mk(
        "/v1/orgs/alpha/groups/ops/members",
        json!({"principal": "user:ursula"}),
    )
    .await;
    mk(
        "/v1/orgs/alpha/policies",
        json!({"name": "p", "body": "permit(principal, action, resource) when { false };"}),
    )
    .await;
    let binding = mk(
        "/v1/orgs/alpha/role-bindings",
        json!({"principal": "user:ursula", "role": "viewer"}),
    )
    .await;
    let token = mk("/v1/orgs/alpha/tokens", json!({"name": "t"})).await;
    let r = s
        .t(
            Method::PUT,
            "/v1/orgs/alpha/oidc",
            &a,
            Some(json!({"issuer": "https://idp.alpha.example", "client_id": "nuage", "client_secret": "s3cret"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s
        .t(Method::POST, "/v1/orgs/alpha/audit/checkpoint", &a, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    mk("/v1/orgs/alpha/projects/web/keys", json!({"name": "k1"})).await;
    let access_key = mk("/v1/orgs/alpha/access-keys", json!({})).await;
    mk(
        "/v1/orgs/alpha/projects/web/buckets",
        json!({"name": "alpha-b1"}),
    )
    .await;
    mk(
        "/v1/orgs/alpha/projects/web/images",
        json!({"name": "img1"}),
    )
    .await;
    let have_qemu = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok();
    if have_qemu {
        mk(
            "/v1/orgs/alpha/projects/web/volumes",
            json!({"name": "vol1", "size": "1M"}),
        )
        .await;
        mk(
            "/v1/orgs/alpha/projects/web/snapshots",
            json!({"name": "snap1", "volume": "vol1"}),
        )
        .await;
        // An image with a file, and an instance of it (its VM boots to
        // "no bootable device" and idles until the server's VMs are killed).
        let mut disk = vec![0u8; 1 << 20];
        disk[510] = 0x55;
        disk[511] = 0xaa;
        let r = s
            .http
            .put(format!(
                "{}/v1/orgs/alpha/projects/web/images/img1/file",
                s.tenant
            ))
            .bearer_auth(&a)
            .body(disk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        mk(
            "/v1/orgs/alpha/projects/web/instances",
            json!({"name": "vm1", "image": "img1", "memory": "64M"}),
        )
        .await;
    }
    mk(
        "/v1/orgs/alpha/key-managers",
        json!({"name": "vault", "kind": "transit", "transit": {"address": "http://127.0.0.1:1"},
               "transit_token": "t"}),
    )
    .await;

    let params: HashMap<&str, String> = HashMap::from([
        ("key", "k1".to_string()),
        ("bucket", "alpha-b1".to_string()),
        ("image", "img1".to_string()),
        ("volume", "vol1".to_string()),
        ("instance", "vm1".to_string()),
        ("snapshot", "snap1".to_string()),
        (
            "access_key",
            access_key.body["access_key"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
        ("manager", "vault".to_string()),
        ("org", "alpha".to_string()),
        ("project", "web".to_string()),
        ("user", "ursula".to_string()),
        ("service_account", "ci".to_string()),
        ("group", "ops".to_string()),
        ("member", "user:ursula".to_string()),
        ("policy", "p".to_string()),
        ("binding", binding.body["id"].as_str().unwrap().to_string()),
        (
            "token",
            token.body["token"]["id"].as_str().unwrap().to_string(),
        ),
    ]);

    let spec = nuage_api::routes::tenant_spec();
    let spec = serde_json::to_value(&spec).unwrap();
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        if !path.contains("{org}") {
            continue;
        }
        let mut concrete = path.clone();
        for (k, v) in &params {
            concrete = concrete.replace(&format!("{{{k}}}"), v);
        }
        assert!(
            !concrete.contains('{'),
            "no test value for a parameter of {path}"
        );
        if path.ends_with("/proofs/inclusion") {
            concrete.push_str("?index=0&size=1");
        } else if path.ends_with("/proofs/consistency") {
            concrete.push_str("?from=0&to=1");
        }
        for method in ops.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let body = (m != Method::GET && m != Method::DELETE).then(|| json!({}));
            let r = s.t(m.clone(), &concrete, &b, body.clone()).await;
            assert_eq!(
                (r.status, r.code()),
                (404, "not_found"),
                "{method} {path} as another tenant: {}",
                r.text
            );
            assert!(
                !r.text.contains("ursula") && !r.text.contains("prj_"),
                "{method} {path} leaked: {}",
                r.text
            );
            // The console is a WebSocket: a plain GET is refused even for
            // its own tenant (400 websocket_required).
            if m == Method::GET && !path.ends_with("/console") {
                let own = s.t(m, &concrete, &a, None).await;
                assert!(
                    own.status < 400,
                    "{method} {path} works for its own tenant: {}",
                    own.text
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} operations checked");
    // and nothing of A changed
    let r = s
        .t(Method::GET, "/v1/orgs/alpha/projects/web", &a, None)
        .await;
    assert_eq!(r.body["generation"], 1);
    s.shutdown().await;
}
