//! S3 access keys through the API: self-service, service accounts, the
//! secret shown once and never stored in clear, revocation.

use http::Method;
use serde_json::json;

use crate::common::{contains_bytes, files_under, Srv};

#[tokio::test]
async fn access_keys_are_self_service_shown_once_and_sealed() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let viewer = s.user("acme", &owner, "val", Some("viewer")).await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/service-accounts",
            &owner,
            Some(json!({"name": "backup"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // anyone creates their own
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/access-keys",
            &viewer,
            Some(json!({"description": "laptop"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["access_key"]["id"].as_str().unwrap().to_string();
    let secret = r.body["secret_access_key"].as_str().unwrap().to_string();
    assert!(id.starts_with("NK") && id.len() == 20, "{id}");
    assert!(id[2..]
        .chars()
        .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
    assert_eq!(secret.len(), 40);
    assert_eq!(
        r.headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    // never again: not in show, not in list
    let r = s
        .t(
            Method::GET,
            &format!("/v1/orgs/acme/access-keys/{id}"),
            &viewer,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["description"], "laptop");
    assert!(!r.text.contains(&secret));
    let r = s
        .t(Method::GET, "/v1/orgs/acme/access-keys", &viewer, None)
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert!(!r.text.contains(&secret));

    // a viewer makes none for others; an admin makes one for a service
    // account, not for another user
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/access-keys",
            &viewer,
            Some(json!({"principal": "service-account:backup"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/access-keys",
            &owner,
            Some(json!({"principal": "user:val"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/access-keys",
            &owner,
            Some(json!({"principal": "service-account:backup"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let sa_secret = r.body["secret_access_key"].as_str().unwrap().to_string();
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/access-keys?principal=service-account:backup",
            &viewer,
            None,
        )
        .await;
    assert_eq!(
        r.status, 403,
        "a viewer does not list others' keys: {}",
        r.text
    );
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/access-keys?principal=service-account:backup",
            &owner,
            None,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.text);

    // revocation, once
    let r = s
        .t(
            Method::DELETE,
            &format!("/v1/orgs/acme/access-keys/{id}"),
            &viewer,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["revoked_at"].is_string());
    let r = s
        .t(
            Method::DELETE,
            &format!("/v1/orgs/acme/access-keys/{id}"),
            &viewer,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "already_revoked"));
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/access-keys/NKNOSUCHKEY234567ABC",
            &owner,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));

    // the secrets are sealed in the store, nowhere in clear
    let data = s.data_dir.clone();
    s.shutdown().await;
    for f in files_under(&data) {
        let bytes = std::fs::read(&f).unwrap();
        for secret in [&secret, &sa_secret] {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "an access key secret is in clear in {}",
                f.display()
            );
        }
    }
}
