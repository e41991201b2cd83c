//! A real PyKMIP server for tests, with a private PKI made by the `openssl`
//! CLI, so that the KMIP client is tested against an independent
//! implementation rather than against itself.
//!
//! PyKMIP's "TLS1.2" suite allows only CBC cipher suites plus ECDHE-ECDSA
//! with AES-GCM; rustls speaks only the latter, so every key here is ECDSA
//! P-256. The server checks that client certificates carry the clientAuth
//! extended key usage, and names each client by its certificate's CN.
//!
//! The server runs in its own process group (it forks a policy monitor and
//! a multiprocessing manager) next to a tiny `sh` watchdog in the same group
//! that reads a pipe from this process: when the pipe closes, because the
//! server is stopped or dropped or because the test process died in any
//! way, the watchdog kills the whole group. No process outlives the test.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::external::kmip::KmipConfig;

const READY_WITHIN: Duration = Duration::from_secs(30);

/// The client identity the server's own client certificate carries.
pub const CLIENT_CN: &str = "nuage";

/// A running `pykmip-server` on 127.0.0.1, stopped and cleaned up on drop.
pub struct KmipServer {
    exe: PathBuf,
    dir: PathBuf,
    port: u16,
    process: Option<Running>,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

struct Running {
    server: Child,
    /// Holds the watchdog's stdin open; `None` if the watchdog could not start.
    watchdog: Option<(Child, ChildStdin)>,
}

impl KmipServer {
    /// Starts a server, or returns `None` when PyKMIP or openssl is not
    /// installed and `NUAGE_TEST_REQUIRE_KMIP` is unset (the caller then
    /// skips). Panics if a server that is installed fails to start.
    pub fn start() -> Option<KmipServer> {
        let required = std::env::var_os("NUAGE_TEST_REQUIRE_KMIP").is_some_and(|v| !v.is_empty());
        let exe = match find_pykmip() {
            Ok(exe) => exe,
            Err(why) if required => panic!("NUAGE_TEST_REQUIRE_KMIP is set but {why}"),
            Err(_) => return None,
        };
        match Self::launch(exe) {
            Ok(server) => Some(server),
            Err(e) => panic!("PyKMIP test server: {e}"),
        }
    }

    fn launch(exe: PathBuf) -> Result<KmipServer, String> {
        let port = super::free_port().map_err(|e| format!("free port: {e}"))?;
        // From here on, dropping `server` removes the directory.
        let mut server = KmipServer {
            exe,
            dir: make_temp_dir()?,
            port,
            process: None,
            ca_pem: String::new(),
            client_cert_pem: String::new(),
            client_key_pem: String::new(),
        };
        let pki = Pki::new(&server.dir.join("pki"), "nuage test KMIP CA")?;
        pki.issue("server", "127.0.0.1", "server_ext")?;
        let (cert, key) = pki.issue("client", CLIENT_CN, "client_ext")?;
        server.ca_pem = read(&pki.ca_cert())?;
        server.client_cert_pem = cert;
        server.client_key_pem = key;
        std::fs::create_dir(server.dir.join("policies")).map_err(|e| format!("policy dir: {e}"))?;
        let d = &server.dir;
        let conf = format!(
            "[server]\nhostname=127.0.0.1\nport={port}\ncertificate_path={cert}\nkey_path={key}\n\
             ca_path={ca}\nauth_suite=TLS1.2\nenable_tls_client_auth=True\npolicy_path={policies}\n\
             database_path={db}\nlogging_level=INFO\n",
            port = server.port,
            cert = d.join("pki/server.pem").display(),
            key = d.join("pki/server.key").display(),
            ca = pki.ca_cert().display(),
            policies = d.join("policies").display(),
            db = d.join("pykmip.sqlite").display(),
        );
        std::fs::write(d.join("server.conf"), conf).map_err(|e| format!("server.conf: {e}"))?;
        server.spawn()?;
        Ok(server)
    }

    /// Client settings for the identity [`CLIENT_CN`].
    pub fn config(&self) -> KmipConfig {
        KmipConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            server_name: None,
            ca_pem: self.ca_pem.clone(),
            client_cert_pem: self.client_cert_pem.clone(),
            client_key_pem: self.client_key_pem.clone(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Client settings for another identity trusted by the server: PyKMIP
    /// keeps each key private to the identity that created it.
    pub fn config_for(&self, common_name: &str) -> KmipConfig {
        let pki = Pki::existing(&self.dir.join("pki"));
        let (cert, key) = pki
            .issue(&unique_name("client"), common_name, "client_ext")
            .unwrap_or_else(|e| panic!("client certificate for {common_name}: {e}"));
        KmipConfig {
            client_cert_pem: cert,
            client_key_pem: key,
            ..self.config()
        }
    }

    /// Client settings whose certificate comes from a CA the server does not
    /// trust (the client still trusts the server).
    pub fn config_from_foreign_ca(&self) -> KmipConfig {
        let foreign = (|| {
            let pki = Pki::new(&self.dir.join(unique_name("foreign")), "foreign CA")?;
            pki.issue("client", CLIENT_CN, "client_ext")
        })();
        let (cert, key) = foreign.unwrap_or_else(|e| panic!("foreign client certificate: {e}"));
        KmipConfig {
            client_cert_pem: cert,
            client_key_pem: key,
            ..self.config()
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default());
        log
    }

    /// Kills the server (an outage); the database and port are kept.
    pub fn stop(&mut self) {
        let Some(mut running) = self.process.take() else {
            return;
        };
        match running.watchdog.take() {
            Some((mut watchdog, stdin)) => {
                drop(stdin);
                let _ = watchdog.wait();
            }
            None => {
                let _ = running.server.kill();
            }
        }
        let _ = running.server.wait();
    }

    /// Starts the server again on the same port, with the same keys.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("PyKMIP test server restart: {e}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .map_err(|e| format!("server.out: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("server.out: {e}"))?;
        let server = Command::new(&self.exe)
            .arg("-f")
            .arg(self.dir.join("server.conf"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .env("PYTHONWARNINGS", "ignore")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        let pgid = server.id();
        let watchdog = Command::new("sh")
            .args(["-c", "cat >/dev/null; kill -9 0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(pgid as i32)
            .spawn()
            .ok()
            .and_then(|mut w| w.stdin.take().map(|stdin| (w, stdin)));
        self.process = Some(Running { server, watchdog });
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let exited = match self.process.as_mut() {
                Some(running) => running.server.try_wait().ok().flatten(),
                None => return Err("not running".into()),
            };
            if let Some(status) = exited {
                self.stop();
                return Err(format!(
                    "pykmip-server exited with {status}:\n{}",
                    self.log()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "pykmip-server did not listen on {addr} within {READY_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for KmipServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh CA of its own, trusted by no real server, with a client and a
/// server certificate; for fake servers and refused handshakes.
pub struct ThrowawayPki {
    /// Settings for `127.0.0.1:port`, trusting only this CA.
    pub client: KmipConfig,
    /// For 127.0.0.1 and localhost.
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Makes a [`ThrowawayPki`] with the openssl CLI; `None` when openssl is
/// missing.
pub fn throwaway_pki(port: u16) -> Option<ThrowawayPki> {
    let dir = make_temp_dir().ok()?;
    let made = (|| {
        let pki = Pki::new(&dir, "throwaway CA")?;
        let (cert, key) = pki.issue("client", CLIENT_CN, "client_ext")?;
        let (server_cert_pem, server_key_pem) = pki.issue("server", "127.0.0.1", "server_ext")?;
        let client = KmipConfig {
            host: "127.0.0.1".into(),
            port,
            server_name: None,
            ca_pem: read(&pki.ca_cert())?,
            client_cert_pem: cert,
            client_key_pem: key,
            timeout: Duration::from_secs(10),
        };
        Ok::<_, String>(ThrowawayPki {
            client,
            server_cert_pem,
            server_key_pem,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    made.ok()
}

fn find_pykmip() -> Result<PathBuf, String> {
    let exe = match std::env::var_os("NUAGE_TEST_PYKMIP_SERVER") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if !path.exists() {
                panic!("NUAGE_TEST_PYKMIP_SERVER={} does not exist", path.display());
            }
            path
        }
        _ => super::venv_tool("pykmip-server")
            .ok_or("pykmip-server is not in target/test-venv (run scripts/test)")?,
    };
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => Ok(exe),
        _ => Err("the openssl CLI is not installed".into()),
    }
}

fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn make_temp_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = unique_name(&format!("nuage-pykmip-{}-{nanos}", std::process::id()));
    let dir = std::env::temp_dir().join(name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("temp dir {}: {e}", dir.display()))?;
    Ok(dir)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A throwaway CA in a directory, driven through the openssl CLI.
struct Pki {
    dir: PathBuf,
}

const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl Pki {
    fn new(dir: &Path, ca_name: &str) -> Result<Pki, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pki = Pki::existing(dir);
        std::fs::write(pki.conf(), OPENSSL_CONF).map_err(|e| format!("openssl.cnf: {e}"))?;
        pki.gen_key("ca.key")?;
        pki.openssl(&[
            "req",
            "-config",
            "openssl.cnf",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name}"),
            "-extensions",
            "ca_ext",
            "-out",
            "ca.pem",
        ])?;
        Ok(pki)
    }

    fn existing(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("openssl.cnf")
    }

    fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `<name>.pem` and `<name>.key`; returns both PEMs.
    fn issue(
        &self,
        name: &str,
        common_name: &str,
        extensions: &str,
    ) -> Result<(String, String), String> {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.gen_key(&key)?;
        self.openssl(&[
            "req",
            "-config",
            "openssl.cnf",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={common_name}"),
            "-out",
            &csr,
        ])?;
        let serial = format!("0x{:016x}", rand::random::<u64>() >> 1);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-sha256",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            extensions,
            "-out",
            &cert,
        ])?;
        Ok((read(&self.dir.join(cert))?, read(&self.dir.join(key))?))
    }

    fn gen_key(&self, name: &str) -> Result<(), String> {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ])
    }

    fn openssl(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .env("OPENSSL_CONF", self.conf())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
