//! `nuage`: one binary for the control plane (`nuage server`) and the CLI.

mod agent;
mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nuage_api::ServerConfig;

#[derive(Debug, Parser)]
#[command(name = "nuage", version, about = "nuage — a sovereign cloud platform")]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (API, IAM, audit) on this machine.
    Server(Box<ServerArgs>),
    /// Run the agent of a compute node on a host of its own (enrolled with
    /// `nuage node enroll`); it talks only to the control plane.
    Agent(agent::AgentArgs),
    /// Print the OpenAPI document generated from the code.
    Openapi {
        /// The operator API instead of the tenant API.
        #[arg(long)]
        admin: bool,
    },
    /// Measure the API or the key service against baselines taken in the same run.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(nuage_cli::Command),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Where the embedded database, keys and bootstrap token live.
    #[arg(long, env = "NUAGE_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Use PostgreSQL (postgres://…) instead of the embedded SQLite.
    #[arg(long, env = "NUAGE_DATABASE_URL")]
    database_url: Option<String>,
    /// Tenant API address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Operator API address (keep it on loopback or a management network).
    #[arg(long, default_value = "127.0.0.1:8444")]
    admin_listen: SocketAddr,
    /// S3 endpoint address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    s3_listen: SocketAddr,
    /// S3 domain for virtual-hosted addressing (`<bucket>.<domain>`);
    /// requests to any other host name or an IP address are path-style.
    #[arg(long, default_value = "s3.localhost")]
    s3_domain: String,
    /// Region name S3 reports (GetBucketLocation); clients may sign with any.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (behind a TLS proxy).
    #[arg(long)]
    insecure_http: bool,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Seconds a client has to send a request's headers (a new
    /// connection's first request, TLS handshake included, from the accept).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_seconds: u64,
    /// Seconds a request body may deliver no byte (and a client may leave
    /// a response unread) before the request ends with a timeout; a large
    /// upload is never cut while its bytes keep coming.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_stall_seconds: u64,
    /// Seconds a keep-alive connection with no request in flight stays open.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_seconds: u64,
    /// Connections one client address (IPv6: one /64) may hold open on each
    /// listener; 0 for no limit (behind a proxy every client has its address).
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Seconds between signed audit checkpoints.
    #[arg(long, default_value_t = 5)]
    checkpoint_seconds: u64,
    /// Days audit entries are kept (at least 183).
    #[arg(long, default_value_t = 365)]
    audit_retention_days: u32,
    /// SQLite durability: `full` survives power loss (the WAL is fsynced, in
    /// groups, before any write is acknowledged), `normal` a process crash.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
    /// Installation name used in audit checkpoints.
    #[arg(long, default_value = "nuage.local")]
    public_name: String,
    /// Name this host registers under as a compute node [default: the hostname].
    #[arg(long, env = "NUAGE_NODE_NAME")]
    node_name: Option<String>,
    /// Empty encrypted disks the node keeps ready, so a new VM or volume
    /// does not wait for QEMU's LUKS key-derivation benchmark (0: none).
    #[arg(long, default_value_t = 2)]
    spare_disks: usize,
    /// CPU niceness of the VMs' QEMU (0–19), so the control plane stays
    /// responsive when guests keep every core busy.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    vm_nice: i32,
    /// Making a compute node schedulable needs a second, different
    /// operator to confirm it (`nuage admin node schedule` by both).
    #[arg(long, env = "NUAGE_TWO_PERSON_NODE_SCHEDULE")]
    two_person_node_schedule: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// How the platform root key is sealed: `key-file` (a key kept outside
    /// the data directory), `passphrase` (argon2id, given at each start) or
    /// `kmip` (a key on an HSM reached over KMIP, see --seal-kmip-*).
    #[arg(long, default_value = "key-file", value_parser = ["key-file", "passphrase", "kmip"])]
    seal: String,
    /// KMIP server sealing the root key (with --seal kmip).
    #[arg(long)]
    seal_kmip_host: Option<String>,
    #[arg(long, default_value_t = 5696)]
    seal_kmip_port: u16,
    /// PEM files: the CA of the KMIP server, nuage's client certificate and its key.
    #[arg(long)]
    seal_kmip_ca: Option<PathBuf>,
    #[arg(long)]
    seal_kmip_cert: Option<PathBuf>,
    #[arg(long)]
    seal_kmip_key: Option<PathBuf>,
    /// Unique identifier of the AES key on the KMIP server.
    #[arg(long)]
    seal_kmip_key_id: Option<String>,
    /// The seal key file [default: <data-dir>.seal.key, beside the data directory].
    #[arg(long, env = "NUAGE_SEAL_KEY_FILE")]
    seal_key_file: Option<PathBuf>,
    /// Read the unseal passphrase from the first line of standard input
    /// (with --seal passphrase); otherwise the server starts sealed and
    /// waits for `nuage admin unseal`.
    #[arg(long)]
    unseal_from_stdin: bool,
    /// Seconds unwrapped keys stay cached in memory (bounds how long a key
    /// revoked on an external key manager stays usable).
    #[arg(long, default_value_t = 30)]
    key_cache_seconds: u64,
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .map(|d| d.join("nuage"))
        .unwrap_or_else(|| PathBuf::from(".nuage"))
}

fn init_logs(json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // s3s, the S3 wire crate, logs every refused request (anonymous, badly
    // signed, NoSuchKey …) at ERROR, some twice: anyone could flood the log.
    // Every request is in the audit log and the S3 front end logs server
    // errors itself, so s3s's ERROR and WARN lines are dropped unless
    // RUST_LOG names s3s.
    let wire_verbose = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("s3s"));
    let quiet_wire = tracing_subscriber::filter::filter_fn(move |m| {
        let s3s = m.target() == "s3s" || m.target().starts_with("s3s::");
        wire_verbose || !(s3s && m.is_event() && *m.level() <= tracing::Level::WARN)
    });
    if json {
        builder.json().finish().with(quiet_wire).init();
    } else {
        builder.finish().with(quiet_wire).init();
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn kmip_seal(a: &ServerArgs) -> Result<nuage_kms::root::SealConfig, String> {
    let need = |v: &Option<PathBuf>, flag: &str| -> Result<String, String> {
        let path = v
            .as_ref()
            .ok_or_else(|| format!("--seal kmip needs {flag}"))?;
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let host = a
        .seal_kmip_host
        .clone()
        .ok_or("--seal kmip needs --seal-kmip-host")?;
    let key_id = a
        .seal_kmip_key_id
        .clone()
        .ok_or("--seal kmip needs --seal-kmip-key-id")?;
    Ok(nuage_kms::root::SealConfig::Kmip {
        config: nuage_kms::external::kmip::KmipConfig {
            host,
            port: a.seal_kmip_port,
            server_name: None,
            ca_pem: need(&a.seal_kmip_ca, "--seal-kmip-ca")?,
            client_cert_pem: need(&a.seal_kmip_cert, "--seal-kmip-cert")?,
            client_key_pem: need(&a.seal_kmip_key, "--seal-kmip-key")?,
            timeout: Duration::from_secs(5),
        },
        key_id,
    })
}

async fn serve(a: ServerArgs) -> ExitCode {
    let kmip = (a.seal == "kmip").then(|| kmip_seal(&a));
    init_logs(a.log_json);
    let mut cfg = ServerConfig::new(a.data_dir.clone());
    cfg.database_url = a.database_url;
    cfg.listen = a.listen;
    cfg.admin_listen = a.admin_listen;
    cfg.s3_listen = a.s3_listen;
    cfg.s3.domain = Some(a.s3_domain);
    cfg.s3.region = a.s3_region;
    cfg.tls_cert = a.tls_cert;
    cfg.tls_key = a.tls_key;
    cfg.allow_insecure_http = a.insecure_http;
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.connections = nuage_api::ConnectionLimits {
        header_read_timeout: Duration::from_secs(a.header_timeout_seconds),
        body_stall_timeout: Duration::from_secs(a.body_stall_seconds),
        idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
        max_connections_per_ip: a.max_connections_per_ip,
    };
    cfg.checkpoint_every = Duration::from_secs(a.checkpoint_seconds.max(1));
    cfg.audit_retention_days = a.audit_retention_days;
    cfg.sqlite_sync_full = a.sqlite_sync == "full";
    cfg.public_name = a.public_name;
    if let Some(name) = a.node_name {
        cfg.node_name = name;
    }
    cfg.kms.cache_ttl = Duration::from_secs(a.key_cache_seconds);
    cfg.spare_disks = a.spare_disks;
    cfg.vm_nice = a.vm_nice;
    cfg.two_person_node_schedule = a.two_person_node_schedule;
    if a.seal == "passphrase" {
        let passphrase = if a.unseal_from_stdin {
            let mut line = zeroize::Zeroizing::new(String::new());
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("nuage server: cannot read the unseal passphrase: {e}");
                return ExitCode::FAILURE;
            }
            Some(zeroize::Zeroizing::new(
                line.trim_end_matches(['\r', '\n']).to_string(),
            ))
        } else {
            None
        };
        cfg.seal = nuage_kms::root::SealConfig::Passphrase(passphrase);
    } else if a.seal == "kmip" {
        match kmip.unwrap_or_else(|| Err("--seal kmip settings".into())) {
            Ok(seal) => cfg.seal = seal,
            Err(e) => {
                eprintln!("nuage server: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if a.unseal_from_stdin {
        eprintln!("nuage server: --unseal-from-stdin goes with --seal passphrase");
        return ExitCode::FAILURE;
    } else if let Some(path) = a.seal_key_file {
        cfg.seal = nuage_kms::root::SealConfig::KeyFile(path);
    }
    let server = match nuage_api::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nuage server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if server.tls { "https" } else { "http" };
    println!("nuage API          {scheme}://{}", server.tenant_addr);
    println!("nuage operator API {scheme}://{}", server.admin_addr);
    println!("nuage S3 endpoint  {scheme}://{}", server.s3_addr);
    println!("data directory     {}", a.data_dir.display());
    if let Some(token) = &server.bootstrap_token {
        println!();
        println!("First start: created the platform operator 'admin'. Its bootstrap token,");
        println!(
            "shown only this once (also in {}):",
            a.data_dir.join("bootstrap-token").display()
        );
        println!();
        println!("    {token}");
        println!();
        println!(
            "Log in with: nuage login --admin --url {scheme}://{} --token <token>",
            server.admin_addr
        );
    }
    tracing::info!(tenant = %server.tenant_addr, admin = %server.admin_addr, "nuage server ready");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// mimalloc: per-thread free lists instead of glibc's arenas. A request
/// makes hundreds of small allocations (headers, strings, JSON, Cedar
/// entities), and malloc/free were 15 % of the server's instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(a) => serve(*a).await,
        Command::Agent(a) => {
            init_logs(false);
            agent::run(a).await
        }
        Command::Openapi { admin } => {
            let api = if admin {
                nuage_api::routes::admin_spec()
            } else {
                nuage_api::routes::tenant_spec()
            };
            print!("{}", nuage_api::openapi::to_json(&api));
            ExitCode::SUCCESS
        }
        Command::Bench(a) => bench::run(a, cli.json).await,
        Command::Client(c) => nuage_cli::run(c, cli.json).await,
    }
}
