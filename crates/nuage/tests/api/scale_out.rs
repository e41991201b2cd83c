//! The scale-out path: several control planes sharing one PostgreSQL.

use http::Method;
use serde_json::json;

use crate::common::{pg_database, Srv};

#[tokio::test]
async fn two_servers_share_one_postgresql() {
    let Some(url) = pg_database().await else {
        eprintln!("PostgreSQL not configured; skipped (scripts/test runs it)");
        return;
    };
    let first = Srv::start_with(|c| c.database_url = Some(url.clone())).await;
    let key = std::fs::read_to_string(first.data_dir.join("audit-signing.key")).unwrap();
    let second = Srv::start_with(|c| {
        c.database_url = Some(url.clone());
        // servers of one installation share the checkpoint signing key
        std::fs::create_dir_all(&c.data_dir).unwrap();
        std::fs::write(c.data_dir.join("audit-signing.key"), &key).unwrap();
        // and the key that unseals the shared root key
        c.seal = nuage_kms::root::SealConfig::KeyFile(first.dir.path().join("data.seal.key"));
    })
    .await;
    assert!(!first.bootstrap.is_empty());
    assert!(
        second.bootstrap.is_empty(),
        "only the first server bootstraps"
    );
    let tok = first.org("acme").await;
    // the session works on both servers
    let mut tasks = Vec::new();
    for (i, base) in [first.tenant.clone(), second.tenant.clone()]
        .into_iter()
        .enumerate()
    {
        let (tok, http) = (tok.clone(), reqwest::Client::new());
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                let r = http
                    .post(format!("{base}/v1/orgs/acme/projects"))
                    .bearer_auth(&tok)
                    .json(&json!({"name": format!("s{i}-{j}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = second
        .t(Method::GET, "/v1/orgs/acme/projects?limit=100", &tok, None)
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 40);
    // one gap-free audit log, written by both servers
    let key = first
        .t(Method::GET, "/v1/orgs/acme/audit/public-key", &tok, None)
        .await;
    let verifier: nuage_audit::note::NoteVerifier =
        key.body["verifier_key"].as_str().unwrap().parse().unwrap();
    let export = second
        .t(Method::GET, "/v1/orgs/acme/audit/export", &tok, None)
        .await;
    let report = nuage_audit::verify::verify_export(
        std::io::Cursor::new(export.text.into_bytes()),
        &verifier,
    )
    .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.entries_checked >= 41);

    // one root key for the installation: a key made through one server
    // decrypts through the other
    let app = first.user("acme", &tok, "app", Some("crypto-user")).await;
    let r = first
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/s0-0/keys",
            &tok,
            Some(json!({"name": "shared"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = first
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/s0-0/keys/shared/encrypt",
            &app,
            Some(json!({"plaintext": "c2NhbGUtb3V0"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = second
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/s0-0/keys/shared/decrypt",
            &app,
            Some(json!({"ciphertext": r.body["ciphertext"]})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["plaintext"].as_str()),
        (200, Some("c2NhbGUtb3V0")),
        "{}",
        r.text
    );
    second.shutdown().await;
    first.shutdown().await;
}
