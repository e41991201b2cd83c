//! A real OpenBao (`bao server -dev -dev-tls`) for tests of the Transit
//! client: in-memory storage, a random root token, its own CA, on
//! 127.0.0.1 with a free port, transit mounted at `transit/` with upsert
//! disabled (so an unknown key name is an error, as in a deployment).
//!
//! Nothing outlives the test: bao runs under a small `sh` watchdog in its
//! own process group; the watchdog kills bao as soon as our end of its stdin
//! pipe closes, which happens even if the test process is killed without
//! running `Drop`. `Drop` kills the whole group and removes the temporary
//! directory (which is also bao's `HOME`, so no token file lands in ours).

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::external::transit::TransitConfig;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// Runs bao and kills it when stdin reaches end of file; exits with bao,
/// after reaping it and the watchdog.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
pid=$!
{ read -r _ <&3; kill -s KILL "$pid"; } 2>/dev/null &
dog=$!
exec 3<&-
wait "$pid"
rc=$?
kill "$dog" 2>/dev/null
wait
exit $rc"#;

/// A running OpenBao dev server; stopped and cleaned up when dropped.
pub struct OpenBaoServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    token: String,
    ca_pem: String,
}

impl OpenBaoServer {
    /// Starts a server, or returns `None` when `bao` is not installed (or
    /// does not start) and `NUAGE_TEST_REQUIRE_BAO` is unset; with it set,
    /// panics instead.
    pub fn start() -> Option<OpenBaoServer> {
        let required = std::env::var_os("NUAGE_TEST_REQUIRE_BAO").is_some();
        let Some(bin) = find_bao() else {
            let msg = match std::env::var_os("NUAGE_TEST_BAO") {
                Some(p) => format!("NUAGE_TEST_BAO={} is not a file", Path::new(&p).display()),
                None => "OpenBao `bao` not found: set NUAGE_TEST_BAO or run scripts/test \
                         (it installs target/test-venv/bin/bao)"
                    .to_string(),
            };
            if required {
                panic!("NUAGE_TEST_REQUIRE_BAO is set but {msg}");
            }
            eprintln!("{msg}");
            return None;
        };
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_with(&bin) {
                Ok(server) => return Some(server),
                Err(Start::PortTaken(e)) => last_err = e,
                Err(Start::Failed(e)) => {
                    last_err = e;
                    break;
                }
            }
        }
        let msg = format!("OpenBao {} did not start: {last_err}", bin.display());
        if required {
            panic!("NUAGE_TEST_REQUIRE_BAO is set but {msg}");
        }
        eprintln!("{msg}");
        None
    }

    fn start_with(bin: &Path) -> Result<OpenBaoServer, Start> {
        let failed = |what: &str, e: std::io::Error| Start::Failed(format!("{what}: {e}"));
        let dir = std::env::temp_dir().join(format!(
            "nuage-openbao-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| failed("cannot create temp dir", e))?;
        let mut server = OpenBaoServer {
            child: None,
            dir,
            port: 0,
            token: hex::encode(rand::random::<[u8; 24]>()),
            ca_pem: String::new(),
        };
        for sub in ["home", "tmp", "tls"] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(server.dir.join(sub))
                .map_err(|e| failed("cannot create temp dir", e))?;
        }
        server.port = free_port_pair().map_err(|e| failed("no free port", e))?;
        let log = fs::File::create(server.log_path()).map_err(|e| failed("log file", e))?;
        let log_err = log.try_clone().map_err(|e| failed("log file", e))?;

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg(bin)
            .args([
                "server",
                "-dev",
                "-dev-tls",
                "-dev-no-store-token",
                "-log-level=info",
            ])
            .arg(format!(
                "-dev-tls-cert-dir={}",
                server.dir.join("tls").display()
            ))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", server.port))
            .arg(format!("-dev-root-token-id={}", server.token))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", server.dir.join("home"))
            .env("TMPDIR", server.dir.join("tmp"))
            .current_dir(&server.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        server.child = Some(cmd.spawn().map_err(|e| failed("cannot run /bin/sh", e))?);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = server.log_tail();
                    let msg = format!("bao exited ({status}) during startup; log:\n{log}");
                    return Err(if log.contains("address already in use") {
                        Start::PortTaken(msg)
                    } else {
                        Start::Failed(msg)
                    });
                }
            }
            if let Ok(ca) = fs::read_to_string(server.dir.join("tls/vault-ca.pem")) {
                if ca.contains("-----END CERTIFICATE-----") {
                    server.ca_pem = ca;
                    if let Ok((200, _)) = server.request("GET", "sys/health", None, None) {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Start::Failed(format!(
                    "not healthy after {READY_TIMEOUT:?}; log:\n{}",
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        server
            .api(
                "POST",
                "sys/mounts/transit",
                Some(serde_json::json!({"type": "transit"})),
            )
            .map_err(Start::Failed)?;
        server
            .api(
                "POST",
                "transit/config/keys",
                Some(serde_json::json!({"disable_upsert": true})),
            )
            .map_err(Start::Failed)?;
        Ok(server)
    }

    /// A client configuration for this server, as root, with a 5 s timeout.
    pub fn config(&self) -> TransitConfig {
        TransitConfig {
            address: self.address(),
            token: self.token.clone(),
            mount: "transit".to_string(),
            ca_pem: Some(self.ca_pem.clone()),
            timeout: Duration::from_secs(5),
        }
    }

    pub fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn root_token(&self) -> &str {
        &self.token
    }

    /// The CA that signed the server's certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Calls the HTTP API as root; returns the JSON answer (`null` for an
    /// empty one) or the status and error text.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        match self.request(method, path, body, Some(&self.token))? {
            (200..=299, v) => Ok(v),
            (status, v) => Err(format!("{method} {path}: HTTP {status}: {v}")),
        }
    }

    /// Creates a policy from `policy_hcl` and returns a new token that has
    /// only that policy. Panics on failure.
    pub fn create_token(&self, policy_hcl: &str) -> String {
        let name = format!("p-{}", hex::encode(rand::random::<[u8; 6]>()));
        let created = self
            .api(
                "PUT",
                &format!("sys/policies/acl/{name}"),
                Some(serde_json::json!({"policy": policy_hcl})),
            )
            .and_then(|_| {
                self.api(
                    "POST",
                    "auth/token/create",
                    Some(serde_json::json!({
                        "policies": [name],
                        "no_default_policy": true,
                        "ttl": "1h",
                    })),
                )
            });
        match created {
            Ok(v) => match v["auth"]["client_token"].as_str() {
                Some(t) => t.to_string(),
                None => panic!("token creation answered without a token"),
            },
            Err(e) => panic!("cannot create a token: {e}"),
        }
    }

    /// Seals the server: it keeps running and answers 503 until
    /// [`unseal`](Self::unseal); keys survive. Panics on failure.
    pub fn seal(&self) {
        if let Err(e) = self.api("PUT", "sys/seal", None) {
            panic!("cannot seal OpenBao: {e}");
        }
    }

    /// Unseals with the key the dev server printed at startup. Panics on
    /// failure.
    pub fn unseal(&self) {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let key = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key:"))
            .map(|k| k.trim().to_string());
        let Some(key) = key else {
            panic!("no unseal key in the OpenBao log");
        };
        if let Err(e) = self.api("PUT", "sys/unseal", Some(serde_json::json!({"key": key}))) {
            panic!("cannot unseal OpenBao: {e}");
        }
    }

    /// Kills the server (an outage: connections are refused from now on;
    /// its in-memory keys are gone). Idempotent.
    pub fn stop(&mut self) {
        self.kill();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Closing stdin makes the watchdog kill bao; the shell then reaps
        // both and exits.
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        // Fallback: kill the whole group. Its id is the shell's pid, which
        // stays reserved until the shell is reaped below.
        let _ = Command::new("/bin/sh")
            .args(["-c", "kill -s KILL -- \"-$1\" 2>/dev/null", "sh"])
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("bao.log")
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), String> {
        let url = format!("{}/v1/{path}", self.address());
        let ca = self.ca_pem.clone();
        let token = token.map(str::to_string);
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        // On its own thread and runtime: callers may be inside a runtime.
        let joined = std::thread::spawn(move || -> Result<(u16, serde_json::Value), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let cert = reqwest::Certificate::from_pem(ca.as_bytes())
                    .map_err(|e| format!("CA: {e}"))?;
                let http = reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(cert)
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut req = http.request(method, url);
                if let Some(t) = token {
                    req = req.header("X-Vault-Token", t);
                }
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
                let value = if bytes.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    })
                };
                Ok((status, value))
            })
        })
        .join();
        joined.unwrap_or_else(|_| Err("request thread panicked".to_string()))
    }
}

impl Drop for OpenBaoServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum Start {
    /// Lost a race for the port: worth another try.
    PortTaken(String),
    Failed(String),
}

fn find_bao() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NUAGE_TEST_BAO") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    super::venv_tool("bao")
}

/// A free port whose successor is free too: dev mode puts the cluster
/// listener on port + 1.
fn free_port_pair() -> std::io::Result<u16> {
    for _ in 0..20 {
        let port = super::free_port()?;
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no two consecutive free ports",
    ))
}
