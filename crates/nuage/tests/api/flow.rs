//! A tenant's everyday flows, and bad input refused precisely.

use http::Method;
use serde_json::json;

use crate::common::{Srv, PW};

#[tokio::test]
async fn project_lifecycle_with_etags() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "web", "labels": {"env": "prod"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.headers["etag"], "\"1\"");
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("prj_"));
    // by name and by id
    for key in ["web", id.as_str()] {
        let r = s
            .t(
                Method::GET,
                &format!("/v1/orgs/acme/projects/{key}"),
                &tok,
                None,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["labels"]["env"], "prod");
    }
    // stale If-Match refused, current accepted
    let mut stale = s
        .http
        .patch(format!("{}/v1/orgs/acme/projects/web", s.tenant))
        .bearer_auth(&tok);
    stale = stale
        .header("if-match", "\"7\"")
        .json(&json!({"description": "x"}));
    let r = crate::common::into_resp(stale.send().await.unwrap()).await;
    assert_eq!((r.status, r.code()), (412, "precondition_failed"));
    let ok = s
        .http
        .patch(format!("{}/v1/orgs/acme/projects/web", s.tenant))
        .bearer_auth(&tok)
        .header("if-match", "\"1\"")
        .json(&json!({"description": "front end"}))
        .send()
        .await
        .unwrap();
    let r = crate::common::into_resp(ok).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["etag"], "\"2\"");
    assert_eq!(r.body["description"], "front end");
    let r = s
        .t(Method::DELETE, "/v1/orgs/acme/projects/web", &tok, None)
        .await;
    assert_eq!(r.status, 204);
    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects/web", &tok, None)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    assert!(r.body["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(r.headers["content-type"], "application/problem+json");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let s = Srv::start_with(|c| c.max_body_bytes = 4096).await;
    let tok = s.org("acme").await;
    let url = format!("{}/v1/orgs/acme/projects", s.tenant);
    let raw = |body: &'static str, ctype: &'static str| {
        let req = s
            .http
            .post(&url)
            .bearer_auth(&tok)
            .header("content-type", ctype)
            .body(body);
        async move { crate::common::into_resp(req.send().await.unwrap()).await }
    };
    let r = raw("{\"name\": ", "application/json").await;
    assert_eq!((r.status, r.code()), (400, "malformed_json"));
    let r = raw("{\"name\": \"ok\", \"colour\": 1}", "application/json").await;
    assert_eq!((r.status, r.code()), (400, "invalid_body"));
    assert!(r.body["detail"].as_str().unwrap().contains("colour"));
    let r = raw("{\"name\": \"ok\"}", "text/plain").await;
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"));
    let big = "x".repeat(10_000);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "big", "description": big})),
        )
        .await;
    assert_eq!((r.status, r.code()), (413, "body_too_large"));
    for bad in ["Web", "1web", "web-", "we_b", ""] {
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/acme/projects",
                &tok,
                Some(json!({"name": bad})),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "invalid_name"), "{bad}");
    }
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "already_exists"));
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/projects/prj_00000000000000000000000000000000",
            &tok,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects?limit=0", &tok, None)
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_limit"));
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/projects?page_token=%%%",
            &tok,
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects?colour=red", &tok, None)
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_query"));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policies",
            &tok,
            Some(json!({"name": "p", "body": "permit(principal"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_policy"));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/role-bindings",
            &tok,
            Some(json!({"principal": "user:owner", "role": "superuser"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "unknown_role"));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/users",
            &tok,
            Some(json!({"name": "bob", "password": "short"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "weak_password"));
    let r = s.t(Method::GET, "/v1/nothing-here", &tok, None).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    // nothing above changed anything
    let r = s.t(Method::GET, "/v1/orgs/acme/projects", &tok, None).await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web"]);
    let r = s.t(Method::GET, "/v1/orgs/acme/policies", &tok, None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 0);
    let r = s.t(Method::GET, "/v1/orgs/acme/users", &tok, None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn cursor_pagination_is_complete_and_ordered() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    let mut want = Vec::new();
    for i in 0..45 {
        let name = format!("p{i:02}");
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/acme/projects",
                &tok,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(r.status, 201);
        want.push(name);
    }
    let mut got = Vec::new();
    let mut path = "/v1/orgs/acme/projects?limit=20".to_string();
    loop {
        let r = s.t(Method::GET, &path, &tok, None).await;
        assert_eq!(r.status, 200);
        got.extend(
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_string()),
        );
        match r.body["next_page_token"].as_str() {
            Some(t) => path = format!("/v1/orgs/acme/projects?limit=20&page_token={t}"),
            None => break,
        }
    }
    assert_eq!(got, want);
    s.shutdown().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    let send = |name: &'static str, key: &'static str| {
        let req = s
            .http
            .post(format!("{}/v1/orgs/acme/projects", s.tenant))
            .bearer_auth(&tok)
            .header("idempotency-key", key)
            .json(&json!({"name": name}));
        async move { crate::common::into_resp(req.send().await.unwrap()).await }
    };
    let first = send("web", "k1").await;
    assert_eq!(first.status, 201);
    let again = send("web", "k1").await;
    assert_eq!(
        again.status, 201,
        "a retry gets the first answer, not a conflict"
    );
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let reused = send("api", "k1").await;
    assert_eq!(
        (reused.status, reused.code()),
        (422, "idempotency_key_reused")
    );
    let r = s.t(Method::GET, "/v1/orgs/acme/projects", &tok, None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_are_shown_once_and_stop_working_when_revoked_or_expired() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/tokens",
            &tok,
            Some(json!({"name": "ci", "ttl_seconds": 3600})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let id = r.body["token"]["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("nuage_") && secret.len() >= 6 + 43);
    let me = s.t(Method::GET, "/v1/me", &secret, None).await;
    assert_eq!(me.status, 200);
    // never shown again
    let r = s
        .t(
            Method::GET,
            &format!("/v1/orgs/acme/tokens/{id}"),
            &tok,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.text.contains(&secret));
    assert!(
        r.body["last_used_at"].is_string(),
        "last use recorded: {}",
        r.text
    );
    let r = s.t(Method::GET, "/v1/orgs/acme/tokens", &tok, None).await;
    assert!(!r.text.contains(&secret));
    let r = s
        .t(
            Method::DELETE,
            &format!("/v1/orgs/acme/tokens/{id}"),
            &tok,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let me = s.t(Method::GET, "/v1/me", &secret, None).await;
    assert_eq!((me.status, me.code()), (401, "unauthenticated"));
    assert!(me.body["detail"].as_str().unwrap().contains("revoked"));

    // expiry: age a token in the database
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/tokens",
            &tok,
            Some(json!({"name": "old", "ttl_seconds": 3600})),
        )
        .await;
    let old = r.body["secret"].as_str().unwrap().to_string();
    let old_id = r.body["token"]["id"].as_str().unwrap().to_string();
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", s.data_dir.join("nuage.db").display());
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE tokens SET expires_at = 1 WHERE id = $1")
            .bind(&old_id)
            .execute(&mut c)
            .await
            .unwrap();
    }
    let me = s.t(Method::GET, "/v1/me", &old, None).await;
    assert_eq!(me.status, 401);
    assert!(me.body["detail"].as_str().unwrap().contains("expired"));
    let me = s.t(Method::GET, "/v1/me", "nuage_not-a-token", None).await;
    assert_eq!(me.status, 401);
    let r = s
        .req(Method::GET, &format!("{}/v1/me", s.tenant), None, None)
        .await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    s.shutdown().await;
}

#[tokio::test]
async fn repeated_login_failures_lock_the_account_for_a_while() {
    let s = Srv::start_with(|c| {
        c.login.first_lockout = std::time::Duration::from_secs(2);
    })
    .await;
    let _ = s.org("acme").await;
    let login = |password: &'static str| {
        let req = s
            .http
            .post(format!("{}/v1/login", s.tenant))
            .json(&json!({"org": "acme", "user": "owner", "password": password}));
        async move { crate::common::into_resp(req.send().await.unwrap()).await }
    };
    for _ in 0..5 {
        let r = login("wrong password!").await;
        assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    }
    let r = login(PW).await;
    assert_eq!(
        (r.status, r.code()),
        (429, "account_locked"),
        "even the right password waits"
    );
    assert!(r.headers.contains_key("retry-after"));
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let r = login(PW).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // unknown users and organizations get the same answer as a wrong password
    let r = s
        .req(
            http::Method::POST,
            &format!("{}/v1/login", s.tenant),
            None,
            Some(json!({"org": "nope", "user": "owner", "password": PW})),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    s.shutdown().await;
}

#[tokio::test]
async fn totp_second_factor_and_mfa_only_roles() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    let r = s.t(Method::POST, "/v1/me/mfa", &tok, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let r = s
        .t(
            Method::POST,
            "/v1/me/mfa/confirm",
            &tok,
            Some(json!({"code": "000000"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_code"));
    let code = nuage_iam::totp::current(&secret, now()).unwrap();
    let r = s
        .t(
            Method::POST,
            "/v1/me/mfa/confirm",
            &tok,
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // the organization now requires MFA for owners
    let r = s
        .t(
            Method::PATCH,
            "/v1/orgs/acme",
            &tok,
            Some(json!({"mfa_required_roles": ["owner", "admin"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let login = |totp: Option<String>| {
        let mut body = json!({"org": "acme", "user": "owner", "password": PW});
        if let Some(t) = totp {
            body["totp"] = json!(t);
        }
        let req = s.http.post(format!("{}/v1/login", s.tenant)).json(&body);
        async move { crate::common::into_resp(req.send().await.unwrap()).await }
    };
    let r = login(None).await;
    assert_eq!((r.status, r.code()), (401, "mfa_required"));
    let r = login(Some(nuage_iam::totp::current(&secret, now()).unwrap())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["token"]["token"]["mfa"], true);
    let mfa_tok = r.body["token"]["secret"].as_str().unwrap().to_string();
    // the old session has no second factor: its owner role no longer counts
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &mfa_tok,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    s.shutdown().await;
}

#[tokio::test]
async fn operators_and_tenants_live_in_separate_realms() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    // the bootstrap (operator) token is refused by the tenant listener
    let r = s.t(Method::GET, "/v1/me", &s.bootstrap, None).await;
    assert_eq!(r.status, 401);
    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects", &s.bootstrap, None)
        .await;
    assert_eq!(r.status, 401);
    // a tenant token is refused by the admin listener
    let r = s
        .req(
            Method::GET,
            &format!("{}/admin/v1/orgs", s.admin),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    // operator routes do not exist on the tenant listener
    let r = s.t(Method::GET, "/admin/v1/orgs", &tok, None).await;
    assert_eq!(r.status, 404);
    // an operator without a second factor cannot log in with a password
    let r = s
        .a(
            Method::POST,
            "/admin/v1/operators",
            Some(json!({"name": "ops", "password": PW})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .req(
            Method::POST,
            &format!("{}/admin/v1/login", s.admin),
            None,
            Some(json!({"name": "ops", "password": PW})),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "mfa_enrollment_required"));
    // quotas are the operator's
    let r = s
        .a(
            Method::PATCH,
            "/admin/v1/orgs/acme",
            Some(json!({"max_projects": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "a"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "b"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "quota_exceeded"));
    // an organization with projects cannot be deleted
    let r = s.a(Method::DELETE, "/admin/v1/orgs/acme", None).await;
    assert_eq!((r.status, r.code()), (409, "not_empty"));
    let r = s
        .req(Method::GET, &format!("{}/metrics", s.admin), None, None)
        .await;
    assert!(r.text.contains("nuage_http_requests_total"), "{}", r.text);
    assert!(r.text.contains("route=\"/v1/orgs/{org}/projects\""));
    let r = s
        .req(Method::GET, &format!("{}/readyz", s.tenant), None, None)
        .await;
    assert_eq!(r.status, 200);
    s.shutdown().await;
}

/// The operator's storage quota on a tenant project tells the operator
/// nothing of the project: the same answer, the quota as set, whether the
/// project exists or not, and never its usage. A quota set before the
/// project exists applies once the tenant creates it; the tenant reads its
/// quota through its own API.
#[tokio::test]
async fn the_operators_storage_quota_reveals_nothing_of_the_project() {
    let s = Srv::start().await;
    let tok = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let quota = json!({"max_bytes": 1000, "max_objects": 7});
    let mut answers = Vec::new();
    for project in ["web", "ghost"] {
        let r = s
            .a(
                Method::PUT,
                &format!("/admin/v1/orgs/acme/projects/{project}/storage-quota"),
                Some(quota.clone()),
            )
            .await;
        answers.push((r.status, r.body));
    }
    assert_eq!(answers[0], (200, quota.clone()), "an existing project");
    assert_eq!(answers[0], answers[1], "a missing project answers the same");
    // the tenant sees the quota; one set before the project existed applies
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &tok,
            Some(json!({"name": "ghost"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for project in ["web", "ghost"] {
        let r = s
            .t(
                Method::GET,
                &format!("/v1/orgs/acme/projects/{project}/storage"),
                &tok,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["quota"], quota, "{project}: {}", r.text);
    }
    // `{}` removes it
    let r = s
        .a(
            Method::PUT,
            "/admin/v1/orgs/acme/projects/web/storage-quota",
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({})), "{}", r.text);
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/projects/web/storage",
            &tok,
            None,
        )
        .await;
    assert_eq!(r.body["quota"], json!({}), "{}", r.text);
    // a project is named by its name (ids are the tenant's); organizations
    // are the operator's to know
    let r = s
        .a(
            Method::PUT,
            "/admin/v1/orgs/acme/projects/prj_0123/storage-quota",
            Some(quota.clone()),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_name"), "{}", r.text);
    let r = s
        .a(
            Method::PUT,
            "/admin/v1/orgs/nope/projects/web/storage-quota",
            Some(quota.clone()),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    s.shutdown().await;
}
