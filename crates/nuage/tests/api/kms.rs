//! The key service through the API: lifecycle, separation of duties,
//! purposes, envelope encryption, audit details, sealing and destruction.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::Method;
use serde_json::{json, Value};

use crate::common::{Srv, PW};

const KEYS: &str = "/v1/orgs/acme/projects/web/keys";

async fn setup(s: &Srv) -> String {
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
    owner
}

async fn encrypt(s: &Srv, tok: &str, key: &str, pt: &[u8]) -> crate::common::Resp {
    s.t(
        Method::POST,
        &format!("{KEYS}/{key}/encrypt"),
        tok,
        Some(json!({"plaintext": B64.encode(pt), "aad": B64.encode("invoice-42")})),
    )
    .await
}

async fn decrypt(s: &Srv, tok: &str, key: &str, ct: &Value) -> crate::common::Resp {
    s.t(
        Method::POST,
        &format!("{KEYS}/{key}/decrypt"),
        tok,
        Some(json!({"ciphertext": ct, "aad": B64.encode("invoice-42")})),
    )
    .await
}

/// A session of the owner opened with a second factor.
async fn mfa_session(s: &Srv, owner: &str) -> String {
    let r = s.t(Method::POST, "/v1/me/mfa", owner, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let code = nuage_iam::totp::current(&secret, now()).unwrap();
    let r = s
        .t(
            Method::POST,
            "/v1/me/mfa/confirm",
            owner,
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let body = json!({"org": "acme", "user": "owner", "password": PW,
        "totp": nuage_iam::totp::current(&secret, now()).unwrap()});
    let r = s
        .req(
            Method::POST,
            &format!("{}/v1/login", s.tenant),
            None,
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["token"]["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn key_lifecycle_with_separate_duties_and_audited_uses() {
    let s = Srv::start().await;
    let owner = setup(&s).await;
    let crypto = s.user("acme", &owner, "app", None).await;
    let admin = s.user("acme", &owner, "keyadm", None).await;
    for (who, role) in [("app", "crypto-user"), ("keyadm", "key-admin")] {
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/acme/projects/web/role-bindings",
                &owner,
                Some(json!({"principal": format!("user:{who}"), "role": role})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }

    // the key admin creates the key; the crypto user cannot
    let r = s
        .t(
            Method::POST,
            KEYS,
            &crypto,
            Some(json!({"name": "billing"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            KEYS,
            &admin,
            Some(json!({"name": "billing", "description": "invoices"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["state"], "enabled");
    assert_eq!(r.body["primary_version"], 1);
    let key_id = r.body["id"].as_str().unwrap().to_string();
    let r = s
        .t(Method::POST, KEYS, &admin, Some(json!({"name": "billing"})))
        .await;
    assert_eq!((r.status, r.code()), (409, "already_exists"));
    let r = s
        .t(
            Method::POST,
            KEYS,
            &admin,
            Some(json!({"name": "Bad_Name"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // the crypto user encrypts and decrypts; neither the key admin nor the
    // owner can, whatever their broad roles
    let r = encrypt(&s, &crypto, "billing", b"IBAN FR76 0000").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["key_version"], 1);
    let v1_ct = r.body["ciphertext"].clone();
    assert!(!r.text.contains("IBAN"));
    for tok in [&admin, &owner] {
        let r = encrypt(&s, tok, "billing", b"x").await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
        // the denial names what would allow it
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap_or_default()
                .ends_with("(a binding to one of these roles allows it: crypto-user)"),
            "{}",
            r.text
        );
        let r = decrypt(&s, tok, "billing", &v1_ct).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    }
    let r = decrypt(&s, &crypto, "billing", &v1_ct).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        B64.decode(r.body["plaintext"].as_str().unwrap()).unwrap(),
        b"IBAN FR76 0000"
    );
    // other associated data, or an altered envelope: refused cleanly
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/decrypt"),
            &crypto,
            Some(json!({"ciphertext": v1_ct, "aad": B64.encode("invoice-43")})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "decrypt_failed"), "{}", r.text);
    let mut raw = B64.decode(v1_ct.as_str().unwrap()).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let r = decrypt(&s, &crypto, "billing", &json!(B64.encode(&raw))).await;
    assert_eq!((r.status, r.code()), (400, "decrypt_failed"), "{}", r.text);
    let r = decrypt(&s, &crypto, "billing", &json!("not base64!")).await;
    assert_eq!((r.status, r.code()), (400, "invalid_base64"), "{}", r.text);
    let big = vec![7u8; 64 * 1024 + 1];
    let r = encrypt(&s, &crypto, "billing", &big).await;
    assert_eq!(r.status, 413, "{}", r.text);

    // rotation: new version for new data, the old one still decrypts
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/rotate"),
            &crypto,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/rotate"),
            &admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["primary_version"], 2);
    assert_eq!(r.body["versions"].as_array().unwrap().len(), 2);
    let r = encrypt(&s, &crypto, "billing", b"second").await;
    assert_eq!(r.body["key_version"], 2, "{}", r.text);
    let r = decrypt(&s, &crypto, "billing", &v1_ct).await;
    assert_eq!((r.status, r.body["key_version"].clone()), (200, json!(1)));

    // purposes: a key that only serves backups refuses tenant requests
    let r = s
        .t(
            Method::PATCH,
            &format!("{KEYS}/billing"),
            &admin,
            Some(json!({"allowed_justifications": ["backup"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["allowed_justifications"], json!(["backup"]));
    let r = decrypt(&s, &crypto, "billing", &v1_ct).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "justification_denied"),
        "{}",
        r.text
    );
    let r = s
        .t(
            Method::PATCH,
            &format!("{KEYS}/billing"),
            &admin,
            Some(json!({"allowed_justifications": []})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = encrypt(&s, &crypto, "billing", b"x").await;
    assert_eq!((r.status, r.code()), (403, "justification_denied"));
    let r = s
        .t(
            Method::PATCH,
            &format!("{KEYS}/billing"),
            &admin,
            Some(json!({"allow_all_justifications": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // disabled: unusable until enabled again
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/disable"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r.body["state"], "disabled", "{}", r.text);
    let r = decrypt(&s, &crypto, "billing", &v1_ct).await;
    assert_eq!((r.status, r.code()), (409, "key_disabled"), "{}", r.text);
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/disable"),
            &admin,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "invalid_key_state"));
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/enable"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r.body["state"], "enabled", "{}", r.text);

    // scheduled destruction: unusable meanwhile, cancellable (stays disabled)
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/schedule-destruction"),
            &admin,
            Some(json!({"days": 0})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_waiting_period"));
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/schedule-destruction"),
            &admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.body["state"], "destroy_scheduled", "{}", r.text);
    let at = time::OffsetDateTime::parse(
        r.body["destroy_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let days = (at - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((167..=168).contains(&days), "7 days by default: {days} h");
    let r = decrypt(&s, &crypto, "billing", &v1_ct).await;
    assert_eq!((r.status, r.code()), (409, "key_destroy_scheduled"));
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/cancel-destruction"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r.body["state"], "disabled", "{}", r.text);
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/enable"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r.status, 200);

    // immediate destruction needs a second factor and the key's name
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/destroy"),
            &admin,
            Some(json!({"confirm": "billing"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "mfa_required"), "{}", r.text);
    let strong = mfa_session(&s, &owner).await;
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/destroy"),
            &strong,
            Some(json!({"confirm": "other"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "confirmation_mismatch"));
    let r = s
        .t(
            Method::POST,
            &format!("{KEYS}/billing/destroy"),
            &strong,
            Some(json!({"confirm": "billing"})),
        )
        .await;
    assert_eq!(r.body["state"], "destroyed", "{}", r.text);
    assert!(r.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["state"] == "destroyed"));
    let r = decrypt(&s, &crypto, "billing", &v1_ct).await;
    assert_eq!((r.status, r.code()), (409, "key_destroyed"), "{}", r.text);
    // a project holding a destroyed key can be deleted; one with live keys not
    let r = s
        .t(Method::POST, KEYS, &admin, Some(json!({"name": "other"})))
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .t(Method::DELETE, "/v1/orgs/acme/projects/web", &owner, None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "project_not_empty"),
        "{}",
        r.text
    );

    // every use is in the audit log with key, version and purpose
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?limit=1000",
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["items"].as_array().unwrap();
    let uses: Vec<&Value> = entries
        .iter()
        .filter(|e| e["record"]["action"] == "kms.decrypt" && e["record"]["status"] == 200)
        .collect();
    assert!(uses.len() >= 2, "{}", r.text);
    let d = &uses[0]["record"]["details"];
    assert_eq!(d["key_id"], json!(key_id));
    assert_eq!(d["justification"], "tenant_request");
    assert_eq!(d["key_operation"], "decrypt");
    assert!(d["key_version"] == "1" || d["key_version"] == "2");
    assert!(entries
        .iter()
        .any(|e| e["record"]["action"] == "kms.encrypt" && e["record"]["decision"] == "deny"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_passphrase_sealed_server_serves_only_health_and_unseal() {
    use nuage_kms::root::SealConfig;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |data: std::path::PathBuf| async move {
        let mut cfg = crate::common::test_config(&data);
        cfg.seal = SealConfig::Passphrase(None);
        nuage_api::start(cfg).await.unwrap()
    };
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move { crate::common::into_resp(http.get(url).send().await.unwrap()).await }
    };
    let post = |url: String, body: Value| {
        let http = http.clone();
        async move { crate::common::into_resp(http.post(url).json(&body).send().await.unwrap()).await }
    };

    let server = start(data.clone()).await;
    let (t, a) = (
        format!("http://{}", server.tenant_addr),
        format!("http://{}", server.admin_addr),
    );
    let token = server.bootstrap_token.clone().unwrap();
    assert_eq!(get(format!("{t}/healthz")).await.status, 200);
    let r = get(format!("{t}/readyz")).await;
    assert_eq!((r.status, r.code()), (503, "sealed"));
    let r = get(format!("{a}/admin/v1/seal-status")).await;
    assert_eq!(r.body, json!({"sealed": true, "method": "passphrase"}));
    let r = crate::common::into_resp(
        http.get(format!("{a}/admin/v1/orgs"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code()), (503, "sealed"), "{}", r.text);
    let r = post(
        format!("{t}/v1/login"),
        json!({"org": "x", "user": "y", "password": "z"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (503, "sealed"));
    let r = post(
        format!("{a}/admin/v1/unseal"),
        json!({"passphrase": "short"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "unseal_failed"), "{}", r.text);
    // the first unseal creates the root key under this passphrase
    let r = post(
        format!("{a}/admin/v1/unseal"),
        json!({"passphrase": "a long operator passphrase"}),
    )
    .await;
    assert_eq!(
        r.body,
        json!({"sealed": false, "method": "passphrase"}),
        "{}",
        r.text
    );
    assert_eq!(get(format!("{t}/readyz")).await.status, 200);
    let r = crate::common::into_resp(
        http.get(format!("{a}/admin/v1/orgs"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    server.shutdown().await;

    // after a restart it is sealed again; a wrong passphrase changes nothing
    let server = start(data.clone()).await;
    let a = format!("http://{}", server.admin_addr);
    let r = post(
        format!("{a}/admin/v1/unseal"),
        json!({"passphrase": "not the operator passphrase"}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "wrong_passphrase"),
        "{}",
        r.text
    );
    assert_eq!(
        get(format!("{a}/admin/v1/seal-status")).await.body["sealed"],
        true
    );
    let r = post(
        format!("{a}/admin/v1/unseal"),
        json!({"passphrase": "a long operator passphrase"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post(
        format!("{a}/admin/v1/unseal"),
        json!({"passphrase": "a long operator passphrase"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "not_sealed"));
    server.shutdown().await;

    // a server started with the key-file method refuses this installation
    let mut cfg = crate::common::test_config(&data);
    cfg.seal = SealConfig::KeyFile(dir.path().join("seal.key"));
    let err = nuage_api::start(cfg).await.err().unwrap().to_string();
    assert!(err.contains("sealed with method \"passphrase\""), "{err}");
}

#[tokio::test]
async fn the_seal_key_file_must_live_outside_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = crate::common::test_config(&data);
    cfg.seal = nuage_kms::root::SealConfig::KeyFile(data.join("seal.key"));
    let err = nuage_api::start(cfg).await.err().unwrap().to_string();
    assert!(
        err.contains("must not be inside the data directory"),
        "{err}"
    );
    // the default sits beside it, mode 0600, and a wrong one is refused
    let data = dir.path().join("d2");
    let running = nuage_api::start(crate::common::test_config(&data))
        .await
        .unwrap();
    let key = dir.path().join("d2.seal.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    running.shutdown().await;
    let other = dir.path().join("other.key");
    nuage_kms::root::key_file(&other, true).unwrap();
    let mut cfg = crate::common::test_config(&data);
    cfg.seal = nuage_kms::root::SealConfig::KeyFile(other);
    let err = nuage_api::start(cfg).await.err().unwrap().to_string();
    assert!(err.contains("does not open"), "{err}");
}

/// Hold your own key through the API: the organization registers its KMIP
/// server, binds a project key to a key on it, and revoking that key there
/// makes the project's data unreadable, with a clear error.
#[tokio::test]
async fn an_organization_holds_its_key_on_its_own_kmip_server() {
    let Some(mut hsm) = nuage_kms::testing::kmip_server::KmipServer::start() else {
        eprintln!("PyKMIP not installed; skipped (scripts/test installs it)");
        return;
    };
    let s = Srv::start().await;
    let owner = setup(&s).await;
    let app = s.user("acme", &owner, "app", Some("crypto-user")).await;
    let cfg = hsm.config();
    let client = nuage_kms::external::kmip::KmipClient::new(cfg.clone()).unwrap();
    let uid = client.create_aes256_key(Some("acme-kek")).await.unwrap();
    client.activate(&uid).await.unwrap();

    let manager = json!({
        "name": "hsm", "kind": "kmip",
        "kmip": {"host": cfg.host, "port": cfg.port, "ca_pem": cfg.ca_pem,
                 "client_cert_pem": cfg.client_cert_pem},
        "kmip_client_key_pem": cfg.client_key_pem,
    });
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/key-managers",
            &app,
            Some(manager.clone()),
        )
        .await;
    assert_eq!(r.status, 403, "crypto users do not manage key managers");
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/key-managers",
            &owner,
            Some(manager),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        !r.text.contains("PRIVATE KEY"),
        "the client key is write-only"
    );
    let r = s
        .t(
            Method::POST,
            KEYS,
            &owner,
            Some(json!({"name": "byok", "external": {"manager": "hsm", "key_id": "404"}})),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "external_key_unusable"),
        "{}",
        r.text
    );
    let r = s
        .t(
            Method::POST,
            KEYS,
            &owner,
            Some(json!({"name": "byok", "external": {"manager": "hsm", "key_id": uid}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["manager"], "hsm");
    assert_eq!(r.body["versions"][0]["external_key_id"], json!(uid));
    let r = s
        .t(
            Method::DELETE,
            "/v1/orgs/acme/key-managers/hsm",
            &owner,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "manager_in_use"));

    let r = encrypt(&s, &app, "byok", b"patient record 1234").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ct = r.body["ciphertext"].clone();
    let r = decrypt(&s, &app, "byok", &ct).await;
    assert_eq!(
        B64.decode(r.body["plaintext"].as_str().unwrap()).unwrap(),
        b"patient record 1234"
    );
    // the key manager is down: a 503 naming it; back up: it works again
    hsm.stop();
    let r = decrypt(&s, &app, "byok", &ct).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "key_manager_unavailable"),
        "{}",
        r.text
    );
    assert!(r.body["detail"].as_str().unwrap().contains("\"hsm\""));
    hsm.restart();
    let r = decrypt(&s, &app, "byok", &ct).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // the organization revokes its key on its own server: data unreadable
    client.revoke(&uid).await.unwrap();
    let r = decrypt(&s, &app, "byok", &ct).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "external_key_unusable"),
        "{}",
        r.text
    );
    assert!(
        r.body["detail"].as_str().unwrap().contains(&uid),
        "{}",
        r.text
    );
    s.shutdown().await;
}

/// The root key sealed by an HSM over KMIP: the server cannot open it
/// without the HSM, waits sealed while the HSM is away, and unseals itself
/// when it returns.
#[tokio::test]
async fn a_root_key_sealed_by_a_kmip_server_waits_for_it() {
    use nuage_kms::root::SealConfig;
    let Some(mut hsm) = nuage_kms::testing::kmip_server::KmipServer::start() else {
        eprintln!("PyKMIP not installed; skipped (scripts/test installs it)");
        return;
    };
    let client = nuage_kms::external::kmip::KmipClient::new(hsm.config()).unwrap();
    let uid = client.create_aes256_key(Some("root-seal")).await.unwrap();
    client.activate(&uid).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = hsm.config();
    let start = |key_id: String| {
        let mut cfg = crate::common::test_config(&data);
        cfg.seal = SealConfig::Kmip {
            config: config.clone(),
            key_id,
        };
        cfg.kms.unseal_retry = std::time::Duration::from_millis(300);
        nuage_api::start(cfg)
    };
    let http = reqwest::Client::new();
    let ready = |addr: std::net::SocketAddr| {
        let http = http.clone();
        async move {
            crate::common::into_resp(
                http.get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    let server = start(uid.clone()).await.unwrap();
    assert_eq!(ready(server.tenant_addr).await.status, 200);
    let token = server.bootstrap_token.clone().unwrap();
    let r = http
        .post(format!("http://{}/admin/v1/orgs", server.admin_addr))
        .bearer_auth(&token)
        .json(&json!({"name": "acme", "owner": {"name": "owner", "password": PW}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    server.shutdown().await;

    hsm.stop();
    let server = start(uid.clone()).await.unwrap();
    let r = ready(server.tenant_addr).await;
    assert_eq!((r.status, r.code()), (503, "sealed"), "{}", r.text);
    let r = crate::common::into_resp(
        http.get(format!("http://{}/admin/v1/seal-status", server.admin_addr))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.body, json!({"sealed": true, "method": "kmip"}));
    hsm.restart();
    let mut waited = 0;
    while ready(server.tenant_addr).await.status != 200 {
        waited += 1;
        assert!(waited < 100, "still sealed 10 s after the HSM came back");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = http
        .post(format!("http://{}/v1/login", server.tenant_addr))
        .json(&json!({"org": "acme", "user": "owner", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown().await;

    let err = start("another-key".into()).await.err().unwrap().to_string();
    assert!(err.contains("sealed by KMIP key"), "{err}");
}
