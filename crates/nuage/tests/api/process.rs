//! The real `nuage` binary: first start, restart, `kill -9` during a burst
//! of writes, TLS, and secrets that must never reach a log or the disk.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{contains_bytes, files_under, Srv, PW};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    child: Child,
    tenant: String,
    admin: String,
}

impl Proc {
    fn spawn(data: &Path, logs: &Path, extra: &[&str]) -> Proc {
        let (tp, ap) = (free_port(), free_port());
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("stdout"))
            .unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("stderr"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nuage"))
            .args(["server", "--data-dir"])
            .arg(data)
            .args([
                "--listen",
                &format!("127.0.0.1:{tp}"),
                "--admin-listen",
                &format!("127.0.0.1:{ap}"),
                "--s3-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "debug,sqlx=warn,hyper=info,h2=info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Proc {
            child,
            tenant: format!("http://127.0.0.1:{tp}"),
            admin: format!("http://127.0.0.1:{ap}"),
        }
    }

    async fn ready(&mut self) {
        let c = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = c.get(format!("{}/readyz", self.tenant)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn term(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn post(
    c: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    match c.post(url).bearer_auth(token).json(&body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or_default())
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

#[tokio::test]
async fn kill_9_during_a_write_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = Proc::spawn(&data, dir.path(), &[]);
    p.ready().await;
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-token"))
        .unwrap()
        .trim()
        .to_string();
    let c = reqwest::Client::new();
    let (st, _) = post(
        &c,
        format!("{}/admin/v1/orgs", p.admin),
        &bootstrap,
        json!({"name": "acme", "max_projects": 100000, "owner": {"name": "owner", "password": PW}}),
    )
    .await;
    assert_eq!(st, 201);
    let r: serde_json::Value = c
        .post(format!("{}/v1/login", p.tenant))
        .json(&json!({"org": "acme", "user": "owner", "password": PW}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = r["token"]["secret"].as_str().unwrap().to_string();

    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, url, tok, acked) = (
            c.clone(),
            format!("{}/v1/orgs/acme/projects", p.tenant),
            tok.clone(),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let (st, _) = post(&c, url.clone(), &tok, json!({"name": name})).await;
                match st {
                    201 => acked.lock().unwrap().push(name),
                    0 => return,
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the burst wrote only {} projects",
        acked.len()
    );

    let mut p = Proc::spawn(&data, dir.path(), &[]);
    p.ready().await;
    let mut have = std::collections::HashSet::new();
    let mut url = format!("{}/v1/orgs/acme/projects?limit=1000", p.tenant);
    loop {
        let r: serde_json::Value = c
            .get(&url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in r["items"].as_array().unwrap() {
            have.insert(item["name"].as_str().unwrap().to_string());
        }
        match r["next_page_token"].as_str() {
            Some(t) => {
                url = format!(
                    "{}/v1/orgs/acme/projects?limit=1000&page_token={t}",
                    p.tenant
                )
            }
            None => break,
        }
    }
    let lost: Vec<_> = acked.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );

    // the audit chain still verifies end to end
    let key: serde_json::Value = c
        .get(format!("{}/v1/orgs/acme/audit/public-key", p.tenant))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifier: nuage_audit::note::NoteVerifier =
        key["verifier_key"].as_str().unwrap().parse().unwrap();
    let export = c
        .get(format!("{}/v1/orgs/acme/audit/export", p.tenant))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let report =
        nuage_audit::verify::verify_export(std::io::Cursor::new(export), &verifier).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.entries_checked as usize >= acked.len());

    // a restart never prints the bootstrap token again; SIGTERM stops cleanly
    let status = p.term();
    assert!(status.success(), "graceful stop: {status}");
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert_eq!(
        stdout.matches(&bootstrap).count(),
        1,
        "bootstrap token printed once only"
    );
}

#[tokio::test]
async fn secrets_never_reach_logs_audit_or_disk_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = Proc::spawn(&data, dir.path(), &[]);
    p.ready().await;
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-token"))
        .unwrap()
        .trim()
        .to_string();
    let c = reqwest::Client::new();
    let owner_pw = "owner-secret-passphrase-1";
    let user_pw = "user-secret-passphrase-2";
    let wrong_pw = "wrong-secret-passphrase-3";
    let (st, _) = post(
        &c,
        format!("{}/admin/v1/orgs", p.admin),
        &bootstrap,
        json!({"name": "acme", "owner": {"name": "owner", "password": owner_pw}}),
    )
    .await;
    assert_eq!(st, 201);
    let login = |user: &'static str, pw: &'static str| {
        c.post(format!("{}/v1/login", p.tenant))
            .json(&json!({"org": "acme", "user": user, "password": pw}))
            .send()
    };
    let r: serde_json::Value = login("owner", owner_pw)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = r["token"]["secret"].as_str().unwrap().to_string();
    let _ = login("owner", wrong_pw).await.unwrap();
    let (st, _) = post(
        &c,
        format!("{}/v1/orgs/acme/users", p.tenant),
        &session,
        json!({"name": "bob", "password": user_pw}),
    )
    .await;
    assert_eq!(st, 201);
    let (st, body) = post(
        &c,
        format!("{}/v1/orgs/acme/tokens", p.tenant),
        &session,
        json!({"name": "ci"}),
    )
    .await;
    assert_eq!(st, 201);
    let api_token = body["secret"].as_str().unwrap().to_string();
    let (_, totp) = post(&c, format!("{}/v1/me/mfa", p.tenant), &session, json!({})).await;
    let totp_secret = totp["secret"].as_str().unwrap().to_string();
    let oidc_secret = "oidc-client-secret-5-abcdef";
    let r = c
        .put(format!("{}/v1/orgs/acme/oidc", p.tenant))
        .bearer_auth(&session)
        .json(
            &json!({"issuer": "https://idp.example", "client_id": "nuage",
                      "client_secret": oidc_secret}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // the token used for a request, a bad token and a password in a body that fails validation
    let _ = c
        .get(format!("{}/v1/me", p.tenant))
        .bearer_auth(&api_token)
        .send()
        .await
        .unwrap();
    let _ = c
        .get(format!("{}/v1/me", p.tenant))
        .bearer_auth(format!("{api_token}x"))
        .send()
        .await
        .unwrap();
    let (st, body) = post(
        &c,
        format!("{}/v1/orgs/acme/users", p.tenant),
        &session,
        json!({"name": "Bad Name", "password": "another-secret-passphrase-4"}),
    )
    .await;
    assert_eq!(st, 400);
    assert!(!body.to_string().contains("another-secret-passphrase-4"));
    let export = c
        .get(format!("{}/v1/orgs/acme/audit/export", p.tenant))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status = p.term();
    assert!(status.success());

    let logs = [
        std::fs::read(dir.path().join("stderr")).unwrap(),
        std::fs::read(dir.path().join("stdout")).unwrap(),
    ];
    assert!(logs[0].len() > 1000, "debug logs were written");
    let secrets = [
        owner_pw,
        user_pw,
        wrong_pw,
        "another-secret-passphrase-4",
        &session,
        &api_token,
        &totp_secret,
        oidc_secret,
        &bootstrap,
    ];
    for secret in secrets {
        assert!(
            !contains_bytes(export.as_bytes(), secret.as_bytes()),
            "a secret is in the audit export"
        );
        // stdout legitimately shows the bootstrap token once, at first start
        if secret != bootstrap {
            assert!(
                !contains_bytes(&logs[1], secret.as_bytes()),
                "a secret is on stdout"
            );
        }
        assert!(
            !contains_bytes(&logs[0], secret.as_bytes()),
            "a secret is in the logs"
        );
    }
    // Passwords and tokens are stored only as hashes; the TOTP seed and the
    // OIDC client secret are sealed by the key service (whose unseal key
    // file sits outside the data directory).
    assert!(!files_under(&data)
        .iter()
        .any(|f| f.to_string_lossy().ends_with("seal.key")));
    for f in files_under(&data) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "bootstrap-token" || name == "audit-signing.key" {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        for secret in [
            owner_pw,
            user_pw,
            wrong_pw,
            session.as_str(),
            api_token.as_str(),
            bootstrap.as_str(),
            totp_secret.as_str(),
            oidc_secret,
        ] {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "a secret is in clear in {}",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn tls_is_served_and_plain_http_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    // A private CA and a server certificate it signs (webpki refuses a
    // self-signed CA certificate used as the server's own).
    let d = dir.path();
    let (cert, key, ca) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        ["req", "-x509"]
            .iter()
            .chain(ec.iter())
            .chain(["-days", "2", "-subj", "/CN=nuage test CA"].iter())
            .map(|s| s.to_string())
            .chain([
                "-keyout".into(),
                d.join("ca.key").display().to_string(),
                "-out".into(),
                ca.display().to_string(),
            ])
            .collect(),
        ["req"]
            .iter()
            .chain(ec.iter())
            .chain(["-subj", "/CN=localhost"].iter())
            .map(|s| s.to_string())
            .chain([
                "-keyout".into(),
                key.display().to_string(),
                "-out".into(),
                d.join("leaf.csr").display().to_string(),
            ])
            .collect(),
        vec![
            "x509".into(),
            "-req".into(),
            "-in".into(),
            d.join("leaf.csr").display().to_string(),
            "-CA".into(),
            ca.display().to_string(),
            "-CAkey".into(),
            d.join("ca.key").display().to_string(),
            "-CAcreateserial".into(),
            "-days".into(),
            "2".into(),
            "-out".into(),
            cert.display().to_string(),
            "-extfile".into(),
            d.join("ext.cnf").display().to_string(),
        ],
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (installed by scripts/test)");
        assert!(ok.success(), "openssl {args:?}");
    }
    let data = dir.path().join("data");
    let mut p = Proc::spawn(
        &data,
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    p.tenant = p.tenant.replace("http://", "https://");
    let ca_file = ca.clone();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Ok(r) = c.get(format!("{}/healthz", p.tenant)).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "TLS server not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A node of its own joins over TLS, trusting the private CA it is
    // given (`--ca-cert`).
    let admin = p.admin.replace("http://", "https://");
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-token"))
        .unwrap()
        .trim()
        .to_string();
    let r = c
        .post(format!("{admin}/admin/v1/nodes"))
        .bearer_auth(&bootstrap)
        .json(&json!({"name": "edge-tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let enrolled: serde_json::Value = r.json().await.unwrap();
    let token_file = d.join("edge.token");
    std::fs::write(&token_file, enrolled["token"].as_str().expect("token")).unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args([
            "agent",
            "--control-plane",
            &admin,
            "--heartbeat-seconds",
            "1",
        ])
        .arg("--ca-cert")
        .arg(&ca_file)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--compute-dir")
        .arg(data.join("compute"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let nodes: serde_json::Value = c
            .get(format!("{admin}/admin/v1/nodes"))
            .bearer_auth(&bootstrap)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let live = nodes["items"].as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["name"] == "edge-tls" && n["live"] == true)
        });
        if live {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent never reported over TLS: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = agent.kill().await;

    // plain HTTP to the TLS port fails
    let plain = reqwest::Client::new()
        .get(p.tenant.replace("https://", "http://") + "/healthz")
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    drop(p);

    let out = Command::new(env!("CARGO_BIN_EXE_nuage"))
        .args(["server", "--data-dir"])
        .arg(dir.path().join("d2"))
        .args(["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--s3-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing plain HTTP on 0.0.0.0"), "{err}");
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let s = Srv::start().await;
    let _ = s.org("acme").await;
    // Password logins are slow (argon2id): a good way to have requests in flight.
    let mut inflight = Vec::new();
    for _ in 0..12 {
        let req = s
            .http
            .post(format!("{}/v1/login", s.tenant))
            .json(&json!({"org": "acme", "user": "owner", "password": PW}))
            .send();
        inflight.push(tokio::spawn(req));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let tenant = s.tenant.clone();
    s.shutdown().await;
    for r in inflight {
        let r = r.await.unwrap().expect("an in-flight request was cut");
        assert_eq!(r.status(), 200);
    }
    assert!(
        reqwest::get(format!("{tenant}/healthz")).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn audit_retention_under_six_months_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::test_config(&dir.path().join("data"));
    cfg.audit_retention_days = 90;
    let err = nuage_api::start(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("at least 183 days"), "{err}");
}
