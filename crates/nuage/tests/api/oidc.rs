//! OIDC federation against a real, certified provider (panva's
//! `oidc-provider`, from the npm registry, run by node): a user of the
//! company directory logs in with the authorization-code flow and PKCE,
//! lands in the nuage group mapped from its directory group, and gets that
//! group's role.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::common::Srv;

const SECRET: &str = "oidc-client-secret-for-tests-0123456789";

pub struct Provider {
    child: Child,
    pub issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the provider, or returns None when it is not installed (it is
/// installed by `scripts/test`, which also makes its absence an error).
pub async fn provider() -> Option<Provider> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !dir.join("node_modules/oidc-provider").exists() {
        assert!(
            std::env::var("NUAGE_TEST_REQUIRE_OIDC").is_err(),
            "oidc-provider is not installed in {}",
            dir.display()
        );
        eprintln!("oidc-provider not installed; OIDC test skipped (scripts/test installs it)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("node")
        .arg(dir.join("provider.mjs"))
        .args([port.to_string(), SECRET.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let issuer = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = c
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "oidc-provider did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Provider { child, issuer })
}

/// Plays the user's browser at the provider: signs in as `login`, consents,
/// and returns the final redirect (to `redirect_uri`) with its query.
pub async fn browser(authorization_url: &str, login: &str, redirect_prefix: &str) -> String {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    let mut url = authorization_url.to_string();
    let origin = {
        let u = reqwest::Url::parse(authorization_url).unwrap();
        format!("{}://{}", u.scheme(), u.host_str().unwrap())
            + &u.port().map(|p| format!(":{p}")).unwrap_or_default()
    };
    for _ in 0..20 {
        if url.starts_with(redirect_prefix) {
            return url;
        }
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut resp = c.get(&url).header("cookie", &cookie).send().await.unwrap();
        if resp.status() == 200 && url.contains("/interaction/") {
            let page = resp.text().await.unwrap();
            let form = if page.contains("value=\"login\"") {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else {
                vec![("prompt", "consent")]
            };
            resp = c
                .post(&url)
                .header("cookie", &cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
        }
        for v in resp.headers().get_all("set-cookie") {
            if let Some((k, rest)) = v.to_str().unwrap().split_once('=') {
                jar.insert(
                    k.to_string(),
                    rest.split(';').next().unwrap_or("").to_string(),
                );
            }
        }
        let status = resp.status();
        assert!(
            status.is_redirection(),
            "provider answered {status} at {url}"
        );
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        url = if loc.starts_with('/') {
            format!("{origin}{loc}")
        } else {
            loc
        };
    }
    panic!("too many redirects at the provider");
}

pub fn query_param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

#[tokio::test]
async fn directory_users_log_in_through_oidc_and_get_their_groups_roles() {
    let Some(idp) = provider().await else { return };
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/groups",
            &owner,
            Some(json!({"name": "admins"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/role-bindings",
            &owner,
            Some(json!({"principal": "group:admins", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cfg = json!({
        "issuer": idp.issuer, "client_id": "nuage", "client_secret": SECRET,
        "group_mappings": {"acme-admins": "admins"}
    });
    let r = s
        .t(Method::PUT, "/v1/orgs/acme/oidc", &owner, Some(cfg))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["has_client_secret"], true);
    assert!(!r.text.contains(SECRET), "the client secret is never shown");

    let redirect = "http://127.0.0.1:45999/callback";
    let login = |who: &'static str| {
        let s = &s;
        async move {
            let r = s
                .req(
                    Method::POST,
                    &format!("{}/v1/login/oidc/start", s.tenant),
                    None,
                    Some(json!({"org": "acme", "redirect_uri": redirect})),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let url = r.body["authorization_url"].as_str().unwrap().to_string();
            assert!(
                url.contains("code_challenge_method=S256"),
                "PKCE is used: {url}"
            );
            let back = browser(&url, who, redirect).await;
            let (code, state) = (query_param(&back, "code"), query_param(&back, "state"));
            assert_eq!(state, r.body["state"].as_str().unwrap());
            let r = s
                .req(
                    Method::POST,
                    &format!("{}/v1/login/oidc/finish", s.tenant),
                    None,
                    Some(json!({"state": state, "code": code})),
                )
                .await;
            (r, state, code)
        }
    };
    let (r, state, code) = login("alice").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["principal"]["name"], "alice");
    assert_eq!(r.body["principal"]["email"], "alice@acme.example");
    let alice = r.body["token"]["secret"].as_str().unwrap().to_string();
    // alice's directory group maps to `admins`, whose role is admin
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/groups/admins/members",
            &owner,
            None,
        )
        .await;
    assert!(r.text.contains("\"alice\""), "{}", r.text);
    let r = s
        .t(
            Method::POST,
            "/v1/orgs/acme/users",
            &alice,
            Some(json!({"name": "carol"})),
        )
        .await;
    assert_eq!(r.status, 201, "alice administers users: {}", r.text);
    // a login state works once
    let r = s
        .req(
            Method::POST,
            &format!("{}/v1/login/oidc/finish", s.tenant),
            None,
            Some(json!({"state": state, "code": code})),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    // bob is in the directory but in no mapped group: logged in, no role
    let (r, _, _) = login("bob").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bob = r.body["token"]["secret"].as_str().unwrap().to_string();
    let r = s.t(Method::GET, "/v1/orgs/acme/projects", &bob, None).await;
    assert_eq!(r.status, 403);
    // a second login reuses the same user
    let (r, _, _) = login("alice").await;
    assert_eq!(r.status, 200);
    let r = s
        .t(Method::GET, "/v1/orgs/acme/users?limit=100", &owner, None)
        .await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alice", "bob", "carol", "owner"]);
    // the logins are audited
    let r = s
        .t(
            Method::GET,
            "/v1/orgs/acme/audit/entries?action=auth.login&limit=100",
            &owner,
            None,
        )
        .await;
    let oidc_logins = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["record"]["policies"] == json!(["oidc"]))
        .count();
    assert_eq!(oidc_logins, 3, "{}", r.text);
    // a redirect elsewhere than loopback or https is refused
    let r = s
        .req(
            Method::POST,
            &format!("{}/v1/login/oidc/start", s.tenant),
            None,
            Some(json!({"org": "acme", "redirect_uri": "http://evil.example/cb"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_redirect_uri"));
    s.shutdown().await;
}

#[tokio::test]
async fn nuage_login_oidc_completes_through_the_browser_redirect() {
    use tokio::io::AsyncBufReadExt;
    let Some(idp) = provider().await else { return };
    let s = Srv::start().await;
    let owner = s.org("acme").await;
    let cfg = json!({"issuer": idp.issuer, "client_id": "nuage", "client_secret": SECRET});
    let r = s
        .t(Method::PUT, "/v1/orgs/acme/oidc", &owner, Some(cfg))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let dir = tempfile::tempdir().unwrap();
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args(["login", "--oidc", "--url", &s.tenant, "--org", "acme"])
        .env("NUAGE_CONFIG_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the CLI prints the address")
            .unwrap()
            .expect("the CLI is still running");
        if let Some(u) = line.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    let callback = query_param(&url, "redirect_uri");
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    let back = browser(&url, "alice", &callback).await;
    // the browser follows the last redirect to the CLI's loopback listener
    let page = reqwest::get(&back).await.unwrap().text().await.unwrap();
    assert!(page.contains("Logged in to nuage"), "{page}");
    let out = tokio::time::timeout(Duration::from_secs(30), cli.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let who = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args(["whoami", "--json"])
        .env("NUAGE_CONFIG_DIR", dir.path())
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&who.stdout).unwrap();
    assert_eq!(v["principal"]["name"], "alice", "{v}");
    s.shutdown().await;
}
