//! `Idempotency-Key` replays: an answer that holds tenant plaintext or a
//! secret is never kept, and a replay is authorized again and audited.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::Method;
use serde_json::{json, Value};

use crate::common::{contains_bytes, files_under, into_resp, Resp, Srv};

const KEYS: &str = "/v1/orgs/acme/projects/web/keys";

async fn post_with_key(s: &Srv, tok: &str, path: &str, key: &str, body: Value) -> Resp {
    let req = s
        .http
        .post(format!("{}{path}", s.tenant))
        .bearer_auth(tok)
        .header("idempotency-key", key)
        .json(&body);
    into_resp(req.send().await.expect("sent")).await
}

#[tokio::test]
async fn a_decrypted_plaintext_is_never_kept_and_a_retry_meets_the_key_as_it_is_now() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &owner,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let app = s.user("acme", &owner, "app", Some("crypto-user")).await;
    let r = s
        .t(Method::POST, KEYS, &owner, Some(json!({"name": "billing"})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let canary = b"idempotency-canary-7d1f0c2a-plaintext";
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/encrypt"),
            &app,
            Some(json!({"plaintext": B64.encode(canary)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let decrypt = json!({"ciphertext": r.body["ciphertext"]});
    let path = format!("{KEYS}/billing/decrypt");
    let r = post_with_key(&s, &app, &path, "d1", decrypt.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["plaintext"], json!(B64.encode(canary)));

    // nowhere on disk, in clear or in the answer's base64
    for f in files_under(&s.data_dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for needle in [canary.to_vec(), B64.encode(canary).into_bytes()] {
            assert!(!contains_bytes(&bytes, &needle), "plaintext in {f:?}");
        }
    }

    // the retry runs again, and the key is disabled now
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/disable"),
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post_with_key(&s, &app, &path, "d1", decrypt).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.headers.get("idempotent-replayed").is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn a_replay_is_authorized_again_and_audited_as_a_replay() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let dev = s.user("acme", &owner, "dev", Some("editor")).await;
    let body = json!({"name": "p1"});
    let first = post_with_key(&s, &dev, "/v1/orgs/acme/projects", "c1", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let first_id = first.headers["x-request-id"].to_str().unwrap().to_string();

    let again = post_with_key(&s, &dev, "/v1/orgs/acme/projects", "c1", body.clone()).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);

    // dev loses the role: the same replay is now refused
    let r = s
        .t(Method::GET, "/v1/orgs/acme/role-bindings", &owner, None)
        .await;
    let binding = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["subject"]["name"] == "dev")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("dev's binding in {}", r.text));
    let r = s
        .t(
            Method::DELETE,
            &format!("/v1/orgs/acme/role-bindings/{binding}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let denied = post_with_key(&s, &dev, "/v1/orgs/acme/projects", "c1", body).await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert!(denied.headers.get("idempotent-replayed").is_none());

    // both replays are in the log, naming the first request
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?limit=1000",
            &owner,
            None,
        )
        .await;
    let replays: Vec<&Value> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["record"])
        .filter(|e| e["details"]["idempotent_replay"] == json!(first_id))
        .collect();
    let decisions: Vec<(&str, &str)> = replays
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["decision"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![("project.create", "allow"), ("project.create", "deny")],
        "{}",
        r.text
    );
    s.shutdown().await;
}
