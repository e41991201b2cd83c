//! Authorization: built-in roles at organization and project scope, groups,
//! custom Cedar policies (forbid wins) and the policy tester.

use http::Method;
use serde_json::json;

use crate::common::Srv;

#[tokio::test]
async fn roles_grant_what_they_name_and_nothing_more() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let viewer = s.user("acme", &owner, "vera", Some("viewer")).await;
    let editor = s.user("acme", &owner, "eddy", Some("editor")).await;
    let nobody = s.user("acme", &owner, "nina", None).await;

    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &editor,
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(r.status, 201, "editor creates: {}", r.text);
    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects/web", &viewer, None)
        .await;
    assert_eq!(r.status, 200, "viewer reads");
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &viewer,
            Some(json!({"name": "api"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "viewer cannot create"
    );
    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects", &nobody, None)
        .await;
    assert_eq!(r.status, 403, "no binding, no access (deny by default)");
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/users",
            &editor,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, 403, "editors do not manage identities");
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/role-bindings",
            &editor,
            Some(json!({"principal": "user:nina", "role": "owner"})),
        )
        .await;
    assert_eq!(r.status, 403, "editors cannot grant roles");
    // anyone manages their own tokens, without any role
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/tokens",
            &nobody,
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // project scope and groups
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &owner,
            Some(json!({"name": "api"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/groups",
            &owner,
            Some(json!({"name": "api-team"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/groups/api-team/members",
            &owner,
            Some(json!({"principal": "user:nina"})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects/api/role-bindings",
            &owner,
            Some(json!({"principal": "group:api-team", "role": "editor"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::PATCH,
            "/v1/orgs/acme/projects/api",
            &nobody,
            Some(json!({"description": "mine"})),
        )
        .await;
    assert_eq!(
        r.status, 200,
        "group binding on the project applies: {}",
        r.text
    );
    let r = s
        .t(
            Method::PATCH,
            "/v1/orgs/acme/projects/web",
            &nobody,
            Some(json!({"description": "no"})),
        )
        .await;
    assert_eq!(r.status, 403, "but not on another project");

    // the last owner cannot be removed
    let r = s
        .t(Method::GET, "/v1/orgs/acme/role-bindings", &owner, None)
        .await;
    let owner_binding = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .t(
            Method::DELETE,
            &format!("/v1/orgs/acme/role-bindings/{owner_binding}"),
            &owner,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "last_owner"));
    s.shutdown().await;
}

#[tokio::test]
async fn custom_cedar_policies_forbid_wins_and_the_tester_explains() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let viewer = s.user("acme", &owner, "vera", Some("viewer")).await;
    for p in ["prod", "dev"] {
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/acme/projects",
                &owner,
                Some(json!({"name": p})),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let forbid = r#"forbid(principal, action == Nuage::Action::"project.delete", resource)
        when { resource.name == "prod" };"#;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policies",
            &owner,
            Some(json!({"name": "protect-prod", "body": forbid})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(Method::DELETE, "/v1/orgs/acme/projects/prod", &owner, None)
        .await;
    assert_eq!(r.status, 403, "an explicit forbid beats the owner role");
    let r = s
        .t(Method::DELETE, "/v1/orgs/acme/projects/dev", &owner, None)
        .await;
    assert_eq!(r.status, 204);

    let permit = r#"permit(principal, action == Nuage::Action::"project.create", resource)
        when { context.source_ip.isInRange(ip("127.0.0.0/8")) && principal.name == "vera" };"#;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policies",
            &owner,
            Some(json!({"name": "vera-local", "body": permit})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/projects",
            &viewer,
            Some(json!({"name": "vera"})),
        )
        .await;
    assert_eq!(r.status, 201, "custom permit applies: {}", r.text);

    let test = |principal: &str, action: &str, resource: &str, ip: &str| json!({"principal": principal, "action": action, "resource": resource, "source_ip": ip});
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policy-test",
            &owner,
            Some(test(
                "user:owner",
                "project.delete",
                "project:prod",
                "127.0.0.1",
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["decision"], "deny");
    assert_eq!(r.body["policies"], json!(["policy:protect-prod"]));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policy-test",
            &owner,
            Some(test("user:vera", "project.create", "org", "127.0.0.1")),
        )
        .await;
    assert_eq!(r.body["decision"], "allow");
    assert_eq!(r.body["policies"], json!(["policy:vera-local"]));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policy-test",
            &owner,
            Some(test("user:vera", "project.create", "org", "192.0.2.7")),
        )
        .await;
    assert_eq!(
        r.body["decision"], "deny",
        "from elsewhere the permit does not apply"
    );
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policy-test",
            &owner,
            Some(test(
                "user:vera",
                "project.get",
                "project:prod",
                "192.0.2.7",
            )),
        )
        .await;
    assert_eq!(r.body["policies"], json!(["role:viewer"]));
    assert_eq!(r.body["roles"], json!(["viewer"]));
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policy-test",
            &owner,
            Some(test("user:vera", "no.such", "org", "127.0.0.1")),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "unknown_action"));
    // the viewer may not use the tester (it reveals the organization's rules)
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policy-test",
            &viewer,
            Some(test("user:vera", "project.get", "org", "127.0.0.1")),
        )
        .await;
    assert_eq!(r.status, 403);
    s.shutdown().await;
}

/// A member of a group reads and changes that group and its members: the
/// group is then both the principal's parent and the resource, which made
/// the authorizer build one Cedar entity twice (500 `duplicate entity
/// entry`).
#[tokio::test]
async fn a_member_of_a_group_reads_and_changes_it() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/groups",
            &owner,
            Some(json!({"name": "ops"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/groups/ops/members",
            &owner,
            Some(json!({"principal": "user:owner"})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    for path in [
        "/v1/orgs/acme/groups/ops",
        "/v1/orgs/acme/groups/ops/members",
    ] {
        let r = s.t(Method::GET, path, &owner, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    }
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/groups/ops/members",
            &owner,
            None,
        )
        .await;
    assert!(r.text.contains("owner"), "{}", r.text);
    let r = s
        .t(
            Method::PATCH,
            "/v1/orgs/acme/groups/ops",
            &owner,
            Some(json!({"description": "on call"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A member without a role is still refused, not failed.
    let nina = s.user("acme", &owner, "nina", None).await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/groups/ops/members",
            &owner,
            Some(json!({"principal": "user:nina"})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s
        .t(Method::GET, "/v1/orgs/acme/groups/ops", &nina, None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    s.shutdown().await;
}

/// Deeply nested policy texts and JSON bodies are refused with a precise
/// error; the server (every tenant's) keeps answering.
#[tokio::test]
async fn deep_inputs_are_refused_and_the_server_stays_up() {
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let deep = |open: &str, close: &str, n: usize| {
        format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            open.repeat(n),
            close.repeat(n)
        )
    };
    let texts = [
        deep("(", ")", 128),
        deep("[", "]", 5_000),
        format!(
            "permit(principal, action, resource) when {{ {}true }};",
            "true && ".repeat(4_000)
        ),
    ];
    for (i, body) in texts.iter().enumerate() {
        let r = s
            .t(
                Method::POST,
                "/v1/orgs/acme/policies",
                &owner,
                Some(json!({"name": format!("deep-{i}"), "body": body})),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "invalid_policy"), "{}", r.text);
    }
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/policies",
            &owner,
            Some(json!({"name": "ok", "body": "forbid(principal, action, resource) when { false };"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .t(
            Method::PATCH,
            "/v1/orgs/acme/policies/ok",
            &owner,
            Some(json!({"body": texts[0]})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_policy"), "{}", r.text);

    // a JSON body nested far deeper than any schema: a 400, not a crash
    let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = s
        .http
        .post(format!("{}/v1/orgs/acme/policy-test", s.tenant))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = s
        .t(Method::GET, "/v1/orgs/acme/projects", &owner, None)
        .await;
    assert_eq!(r.status, 200, "the server still answers");
    s.shutdown().await;
}
