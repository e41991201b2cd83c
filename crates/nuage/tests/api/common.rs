//! Test harness: real servers (in-process, or the real binary as a child),
//! real HTTP, fresh SQLite or PostgreSQL databases.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, Method};
use nuage_api::{RunningServer, ServerConfig};
use serde_json::{json, Value};

pub const PW: &str = "correct horse battery";

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: HeaderMap,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub struct Srv {
    pub tenant: String,
    pub admin: String,
    /// The S3 endpoint.
    pub s3: String,
    pub bootstrap: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    running: Option<RunningServer>,
    /// Kept so that [`Srv::restart`] comes back as the same node.
    node_name: String,
}

pub fn test_config(data_dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(data_dir.to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.s3_listen = "127.0.0.1:0".parse().unwrap();
    cfg.checkpoint_every = Duration::from_secs(1);
    cfg.sqlite_sync_full = false;
    // Servers sharing a database in one test are distinct nodes.
    cfg.node_name = format!("node-{}", uuid_like());
    cfg.stop_timeout = Duration::from_secs(20);
    cfg
}

/// A fresh database on the test PostgreSQL, when one is configured.
pub async fn pg_database() -> Option<String> {
    use sqlx::Connection;
    let base = match std::env::var("NUAGE_TEST_DATABASE_URL") {
        Ok(u) => u,
        Err(_) => {
            assert!(
                std::env::var("NUAGE_TEST_REQUIRE_PG").is_err(),
                "NUAGE_TEST_REQUIRE_PG is set but NUAGE_TEST_DATABASE_URL is not"
            );
            return None;
        }
    };
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid_like());
    let mut conn = sqlx::AnyConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(format!("{prefix}/{name}"))
}

pub fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{n:x}{:x}", std::process::id())
}

impl Srv {
    pub async fn start() -> Srv {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut ServerConfig)) -> Srv {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut cfg = test_config(&data_dir);
        f(&mut cfg);
        let node_name = cfg.node_name.clone();
        let running = nuage_api::start(cfg).await.expect("server starts");
        let bootstrap = running.bootstrap_token.clone().unwrap_or_default();
        Srv {
            tenant: format!("http://{}", running.tenant_addr),
            admin: format!("http://{}", running.admin_addr),
            s3: format!("http://{}", running.s3_addr),
            bootstrap,
            http: reqwest::Client::new(),
            dir,
            data_dir,
            running: Some(running),
            node_name,
        }
    }

    /// Stops the server the way an operator restarting it would (VMs keep
    /// running) and starts it again on the same data directory and node;
    /// the listeners get new ports.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let mut cfg = test_config(&self.data_dir);
        cfg.node_name = self.node_name.clone();
        let running = nuage_api::start(cfg).await.expect("server restarts");
        self.tenant = format!("http://{}", running.tenant_addr);
        self.admin = format!("http://{}", running.admin_addr);
        self.s3 = format!("http://{}", running.s3_addr);
        self.running = Some(running);
    }

    /// Runs one bucket lifecycle pass as if the time were `now_ms`.
    pub async fn lifecycle_pass(&self, now_ms: i64) -> nuage_objects::lifecycle::Report {
        let r = self.running.as_ref().expect("server running");
        r.lifecycle().run(now_ms).await.expect("lifecycle pass")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            // After the agent has stopped, so no VM starts behind our back.
            let compute = r.compute().clone();
            r.shutdown().await;
            compute.host().kill_all_vms();
            compute.host().release_seed_dir();
        }
    }

    pub fn running(&self) -> &nuage_api::RunningServer {
        self.running.as_ref().expect("server running")
    }

    pub async fn req(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut r = self.http.request(method, url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request sent");
        into_resp(resp).await
    }

    pub async fn t(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.req(method, &format!("{}{path}", self.tenant), Some(token), body)
            .await
    }

    pub async fn a(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.req(
            method,
            &format!("{}{path}", self.admin),
            Some(&self.bootstrap),
            body,
        )
        .await
    }

    /// Creates organization `name` with owner `owner` (password [`PW`]) and
    /// returns a session token of the owner.
    pub async fn org(&self, name: &str) -> String {
        let r = self
            .a(
                Method::POST,
                "/admin/v1/orgs",
                Some(json!({"name": name, "owner": {"name": "owner", "password": PW}})),
            )
            .await;
        assert_eq!(r.status, 201, "create org {name}: {}", r.text);
        self.login(name, "owner", PW).await
    }

    pub async fn login(&self, org: &str, user: &str, password: &str) -> String {
        let r = self
            .req(
                Method::POST,
                &format!("{}/v1/login", self.tenant),
                None,
                Some(json!({"org": org, "user": user, "password": password})),
            )
            .await;
        assert_eq!(r.status, 200, "login {org}/{user}: {}", r.text);
        r.body["token"]["secret"].as_str().unwrap().to_string()
    }

    /// Creates a user with password [`PW`], optionally binds a role, and logs in.
    pub async fn user(&self, org: &str, owner: &str, name: &str, role: Option<&str>) -> String {
        let r = self
            .t(
                Method::POST,
                &format!("/v1/orgs/{org}/users"),
                owner,
                Some(json!({"name": name, "password": PW})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        if let Some(role) = role {
            let r = self
                .t(
                    Method::POST,
                    &format!("/v1/orgs/{org}/role-bindings"),
                    owner,
                    Some(json!({"principal": format!("user:{name}"), "role": role})),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
        self.login(org, name, PW).await
    }
}

pub async fn into_resp(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        text,
        headers,
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out
}

pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Drop for Srv {
    /// A test that fails half-way leaves no VM behind.
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.compute().host().kill_all_vms();
        }
    }
}
