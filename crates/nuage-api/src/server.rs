//! Starting and stopping a control plane: the store, the IAM and audit
//! services, the first-start bootstrap and the listeners.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;
use nuage_audit::log::{AuditConfig, AuditLog, AuditTasks};
use nuage_audit::note::NoteSigner;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::{Principal, PrincipalKind};
use nuage_core::time::now_ms;
use nuage_iam::{Authenticator, Authorizer, LoginPolicy, Realm, Registry};
use nuage_kms::root::SealConfig;
use nuage_kms::{Kms, KmsConfig};
use nuage_store::{Store, StoreOptions};
use tokio::task::JoinHandle;

use crate::listener::{ConnectionLimits, Dialect, GuardAcceptor};
use crate::metrics::Metrics;
use crate::state::{AppState, AppStateInner};

/// The key service seals the IAM's second-factor seeds.
struct KmsSecrets(Kms);

impl nuage_iam::authn::SecretBox for KmsSecrets {
    fn seal_text(&self, purpose: &str, plaintext: &str) -> nuage_core::ApiResult<String> {
        self.0.seal_text(purpose, plaintext)
    }

    fn open_text(
        &self,
        purpose: &str,
        stored: &str,
    ) -> nuage_core::ApiResult<zeroize::Zeroizing<String>> {
        self.0.open_text(purpose, stored)
    }
}

/// Audit entries are kept at least this long, whatever the configuration.
pub const MIN_RETENTION_DAYS: u32 = 183;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// `postgres://…` for the scale-out store; SQLite under `data_dir` if absent.
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The S3 endpoint's listener.
    pub s3_listen: SocketAddr,
    pub s3: nuage_objects::S3Config,
    pub objects: nuage_objects::engine::EngineConfig,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address anyway.
    pub allow_insecure_http: bool,
    pub max_body_bytes: usize,
    /// Header, body stall and idle timeouts and the per-IP connection
    /// limit of every listener.
    pub connections: ConnectionLimits,
    pub checkpoint_every: Duration,
    pub audit_retention_days: u32,
    pub sqlite_sync_full: bool,
    /// Name of this installation in audit checkpoints (`<name>/audit/<org>`).
    pub public_name: String,
    pub login: LoginPolicy,
    /// How the platform root key is sealed.
    pub seal: SealConfig,
    pub kms: KmsConfig,
    /// How often keys whose destruction date passed are destroyed.
    pub key_sweep_every: Duration,
    /// How often bucket lifecycle rules are applied.
    pub lifecycle_every: Duration,
    /// The name of this server's compute node (its embedded agent runs
    /// the VMs placed there); the host name by default.
    pub node_name: String,
    /// How long a guest has to power off before its VM is killed.
    pub stop_timeout: Duration,
    /// Empty encrypted disks the node keeps ready (`nuage_compute::ComputeConfig`).
    pub spare_disks: usize,
    /// CPU niceness of the VMs' QEMU (0–19).
    pub vm_nice: i32,
    /// Whether making a compute node schedulable needs a second, different
    /// operator to confirm it (the two-person rule).
    pub two_person_node_schedule: bool,
}

/// The seal key file sits beside the data directory, never inside it:
/// `<data-dir>.seal.key`. Operators should move it to separate storage (and
/// point `--seal-key-file` at it).
pub fn default_seal_key_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "nuage".into());
    name.push(".seal.key");
    data_dir.with_file_name(name)
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        ServerConfig {
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            s3_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            s3: nuage_objects::S3Config::default(),
            objects: nuage_objects::engine::EngineConfig::default(),
            tls_cert: None,
            tls_key: None,
            allow_insecure_http: false,
            max_body_bytes: 1024 * 1024,
            connections: ConnectionLimits::default(),
            checkpoint_every: Duration::from_secs(5),
            audit_retention_days: 365,
            sqlite_sync_full: true,
            public_name: "nuage.local".to_string(),
            login: LoginPolicy::default(),
            seal: SealConfig::KeyFile(default_seal_key_file(&data_dir)),
            kms: KmsConfig::default(),
            key_sweep_every: Duration::from_secs(60),
            lifecycle_every: Duration::from_secs(3600),
            node_name: nuage_compute::nodes::hostname(),
            stop_timeout: Duration::from_secs(60),
            spare_disks: 2,
            vm_nice: 10,
            two_person_node_schedule: false,
            data_dir,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] nuage_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("root key: {0}")]
    Seal(String),
    #[error("compute node: {0}")]
    Compute(String),
}

pub struct RunningServer {
    pub tenant_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub s3_addr: SocketAddr,
    /// The operator bootstrap token, only on the very first start.
    pub bootstrap_token: Option<String>,
    pub tls: bool,
    handles: Vec<Handle>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    audit: AuditTasks,
    maintenance: JoinHandle<()>,
    key_sweeper: JoinHandle<()>,
    lifecycle: nuage_objects::lifecycle::Lifecycle,
    lifecycle_task: JoinHandle<()>,
    compute: nuage_compute::Compute,
    agent: (tokio::sync::watch::Sender<bool>, JoinHandle<()>),
    heartbeat: JoinHandle<()>,
    /// The compute node of this host, as registered at start.
    pub node: nuage_store::NodeRow,
    store: Store,
}

impl RunningServer {
    /// The bucket lifecycle runner (tests run a pass at a chosen time).
    pub fn lifecycle(&self) -> &nuage_objects::lifecycle::Lifecycle {
        &self.lifecycle
    }

    /// The compute service (tests kill their VMs through it).
    pub fn compute(&self) -> &nuage_compute::Compute {
        &self.compute
    }

    /// Stops accepting connections, lets in-flight requests finish (up to
    /// 30 s), flushes the audit log and signs a last checkpoint. Running
    /// VMs keep running: the next start re-attaches to them.
    pub async fn shutdown(self) {
        for h in &self.handles {
            h.graceful_shutdown(Some(Duration::from_secs(30)));
        }
        for s in self.servers {
            if let Ok(Err(e)) = s.await {
                tracing::warn!(error = %e, "listener ended with an error");
            }
        }
        self.maintenance.abort();
        self.key_sweeper.abort();
        self.lifecycle_task.abort();
        self.heartbeat.abort();
        drop(self.lifecycle);
        let _ = self.agent.0.send(true);
        let _ = self.agent.1.await;
        self.compute.host().release_seed_dir();
        self.audit.shutdown().await;
        self.store.close().await;
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

fn audit_signer(cfg: &ServerConfig) -> Result<NoteSigner, StartError> {
    let path = cfg.data_dir.join("audit-signing.key");
    let bad = |e: String| StartError::Config(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(s) => NoteSigner::from_secret_string(s.trim()).map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = NoteSigner::generate(&cfg.public_name).map_err(|e| bad(e.to_string()))?;
            write_private(&path, &format!("{}\n", signer.to_secret_string()))
                .map_err(|e| bad(e.to_string()))?;
            Ok(signer)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// First start: an operator named `admin` and a one-time bootstrap token,
/// also written (mode 0600) to `<data-dir>/bootstrap-token`.
async fn bootstrap(
    store: &Store,
    authn: &Authenticator,
    data_dir: &Path,
) -> Result<Option<String>, StartError> {
    let err = |e: nuage_core::ApiError| StartError::Bootstrap(e.detail);
    if store.operator_count().await.map_err(err)? > 0 {
        return Ok(None);
    }
    let now = now_ms();
    let admin = Principal {
        id: new_id(Kind::Operator),
        org_id: String::new(),
        kind: PrincipalKind::Operator,
        name: "admin".to_string(),
        display_name: "Platform operator".to_string(),
        email: String::new(),
        description: "created at first start".to_string(),
        mfa_enabled: false,
        has_password: false,
        locked_until: None,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = store.principal_create(&admin, None).await {
        // Another server sharing the database bootstrapped first.
        if e.code == "already_exists" {
            return Ok(None);
        }
        return Err(err(e));
    }
    let token = authn
        .issue_token(&admin, "bootstrap", "api", false, 30 * 24 * 3600)
        .await
        .map_err(err)?;
    let path = data_dir.join("bootstrap-token");
    let _ = std::fs::remove_file(&path);
    write_private(&path, &format!("{}\n", token.secret))
        .map_err(|e| StartError::Bootstrap(format!("{}: {e}", path.display())))?;
    Ok(Some(token.secret))
}

fn check_plain_http(addr: SocketAddr, cfg: &ServerConfig) -> Result<(), StartError> {
    if !addr.ip().is_loopback() && cfg.tls_cert.is_none() && !cfg.allow_insecure_http {
        return Err(StartError::Config(format!(
            "refusing plain HTTP on {addr}, which is not a loopback address: give --tls-cert and \
             --tls-key, or --insecure-http if a TLS proxy sits in front"
        )));
    }
    Ok(())
}

pub async fn start(cfg: ServerConfig) -> Result<RunningServer, StartError> {
    if cfg.audit_retention_days < MIN_RETENTION_DAYS {
        return Err(StartError::Config(format!(
            "audit retention must be at least {MIN_RETENTION_DAYS} days (6 months)"
        )));
    }
    check_plain_http(cfg.listen, &cfg)?;
    check_plain_http(cfg.admin_listen, &cfg)?;
    check_plain_http(cfg.s3_listen, &cfg)?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                RustlsConfig::from_pem_file(c, k)
                    .await
                    .map_err(|e| StartError::Tls(e.to_string()))?,
            )
        }
        (None, None) => None,
        _ => {
            return Err(StartError::Config(
                "--tls-cert and --tls-key go together".into(),
            ))
        }
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let url = cfg.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            cfg.data_dir.join("nuage.db").display()
        )
    });
    let store = Store::open(
        &url,
        &StoreOptions {
            sqlite_sync_full: cfg.sqlite_sync_full,
            ..StoreOptions::default()
        },
    )
    .await?;

    if let SealConfig::KeyFile(path) = &cfg.seal {
        if path.starts_with(&cfg.data_dir) {
            return Err(StartError::Config(format!(
                "the seal key file {} must not be inside the data directory {}",
                path.display(),
                cfg.data_dir.display()
            )));
        }
    }
    let kms = Kms::load(store.clone(), cfg.seal.clone(), cfg.kms.clone())
        .await
        .map_err(StartError::Seal)?;
    if kms.is_sealed() {
        tracing::warn!("the server is sealed: unseal it with `nuage admin unseal`");
    }

    let mut registry = Registry::core();
    registry.register(crate::routes::keys::ACTIONS);
    registry.register(nuage_objects::ACTIONS);
    registry.register(nuage_compute::ACTIONS);
    registry.register(nuage_compute::nodes::ACTIONS);
    let registry = Arc::new(registry);
    let authz = Arc::new(
        Authorizer::new(store.clone(), registry).map_err(|e| StartError::Config(e.detail))?,
    );
    let authn = Authenticator::new(store.clone(), cfg.login.clone())
        .with_secrets(Arc::new(KmsSecrets(kms.clone())));
    let (audit, audit_tasks) = AuditLog::start(
        store.clone(),
        audit_signer(&cfg)?,
        AuditConfig {
            origin_prefix: cfg.public_name.clone(),
            checkpoint_every: cfg.checkpoint_every,
            retention: Duration::from_secs(u64::from(cfg.audit_retention_days) * 86_400),
        },
    );
    let bootstrap_token = bootstrap(&store, &authn, &cfg.data_dir).await?;

    let engine = nuage_objects::Engine::open(
        store.clone(),
        kms.clone(),
        &cfg.data_dir,
        cfg.objects.clone(),
    )
    .map_err(|source| StartError::DataDir {
        path: cfg.data_dir.join("objects"),
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    metrics.watch_store(&store);
    let mut compute_cfg = nuage_compute::ComputeConfig::under(&cfg.data_dir);
    compute_cfg.stop_timeout = cfg.stop_timeout;
    compute_cfg.spare_disks = cfg.spare_disks;
    compute_cfg.vm_nice = cfg.vm_nice;
    compute_cfg.two_person_schedule = cfg.two_person_node_schedule;
    let compute = nuage_compute::Compute::open(store.clone(), kms.clone(), compute_cfg).map_err(
        |source| StartError::DataDir {
            path: cfg.data_dir.join("compute"),
            source,
        },
    )?;
    // This server is a compute node too: its agent runs the VMs placed on
    // it (and re-attaches to those still running from before a restart).
    let compute_err = |e: nuage_core::ApiError| StartError::Compute(e.detail);
    nuage_compute::nodes::seed_types(&store)
        .await
        .map_err(compute_err)?;
    let node = nuage_compute::nodes::register_local(
        &store,
        &cfg.node_name,
        &nuage_compute::ComputeConfig::under(&cfg.data_dir).dir,
    )
    .await
    .map_err(compute_err)?;
    let accel = if node.accel == "kvm" {
        nuage_qemu::Accel::Kvm
    } else {
        nuage_qemu::Accel::Tcg
    };
    compute.set_local_node(&node.id, accel);
    let (agent_stop, agent_stop_rx) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(nuage_compute::agent::run(compute.clone(), agent_stop_rx));
    let heartbeat = tokio::spawn(heartbeats(store.clone(), node.id.clone()));
    let consoles = Arc::new(crate::relay::Relays::default());
    let state = |realm| {
        AppState::new(AppStateInner {
            consoles: consoles.clone(),
            store: store.clone(),
            authn: authn.clone(),
            authz: authz.clone(),
            audit: audit.clone(),
            kms: kms.clone(),
            compute: compute.clone(),
            objects: engine.clone(),
            node_id: Some(node.id.clone()),
            metrics: metrics.clone(),
            realm,
            max_body_bytes: cfg.max_body_bytes,
        })
    };
    let (tenant_app, _) = crate::routes::tenant(state(Realm::Tenant));
    let (admin_app, _) = crate::routes::admin(state(Realm::Operator));
    let gc = engine.clone();
    let started = std::time::SystemTime::now();
    tokio::spawn(async move {
        match gc.collect_garbage(started).await {
            Ok((t, o)) if t + o > 0 => {
                tracing::info!(
                    temporary = t,
                    orphans = o,
                    "object storage: crash leftovers removed"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.detail, "object storage garbage collection failed"),
        }
    });
    let lifecycle = nuage_objects::lifecycle::Lifecycle::new(engine.clone(), audit.clone());
    let lifecycle_task = tokio::spawn(lifecycle.clone().run_every(cfg.lifecycle_every));
    let s3_app = nuage_objects::S3Front::new(
        engine,
        authn.clone(),
        authz.clone(),
        audit.clone(),
        cfg.s3.clone(),
    )
    .router();
    let key_sweeper = tokio::spawn(sweep_keys(kms, audit.clone(), cfg.key_sweep_every));
    drop(audit);

    let mut handles = Vec::new();
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for (addr, app, name, dialect) in [
        (cfg.listen, tenant_app, "tenant", Dialect::Rest),
        (cfg.admin_listen, admin_app, "operator", Dialect::Rest),
        (cfg.s3_listen, s3_app, "s3", Dialect::S3),
    ] {
        let listener =
            TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        addrs.push(local);
        let handle = Handle::new();
        let svc = app.into_make_service_with_connect_info::<SocketAddr>();
        let guard = GuardAcceptor::new(cfg.connections, dialect, metrics.clone(), name);
        let task = match &tls {
            Some(t) => {
                let acceptor =
                    axum_server::tls_rustls::RustlsAcceptor::new(t.clone()).acceptor(guard);
                let server = axum_server::from_tcp(listener)
                    .acceptor(acceptor)
                    .handle(handle.clone());
                tokio::spawn(async move { server.serve(svc).await })
            }
            None => {
                let server = axum_server::from_tcp(listener)
                    .acceptor(guard)
                    .handle(handle.clone());
                tokio::spawn(async move { server.serve(svc).await })
            }
        };
        handles.push(handle);
        servers.push(task);
    }

    let maintenance_store = store.clone();
    let maintenance = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            if let Err(e) = maintenance_store
                .idempotency_expire(now_ms() - crate::idempotency::KEEP_MS)
                .await
            {
                tracing::warn!(error = %e, "idempotency key expiry failed");
            }
        }
    });

    Ok(RunningServer {
        tenant_addr: addrs[0],
        admin_addr: addrs[1],
        s3_addr: addrs[2],
        bootstrap_token,
        tls: tls.is_some(),
        handles,
        servers,
        audit: audit_tasks,
        maintenance,
        key_sweeper,
        lifecycle,
        lifecycle_task,
        compute,
        agent: (agent_stop, agent_task),
        heartbeat,
        node,
        store,
    })
}

/// Tells placement this host's node is alive, every
/// [`nuage_compute::nodes::HEARTBEAT_EVERY`] until the server stops.
async fn heartbeats(store: Store, node_id: String) {
    loop {
        tokio::time::sleep(nuage_compute::nodes::HEARTBEAT_EVERY).await;
        if let Err(e) = nuage_compute::nodes::heartbeat(&store, &node_id).await {
            tracing::warn!(node = %node_id, error = %e.detail, "compute node heartbeat failed");
        }
    }
}

/// Destroys keys whose waiting period is over, recording each destruction
/// in the organization's audit log.
async fn sweep_keys(kms: Kms, audit: AuditLog, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if kms.is_sealed() {
            continue;
        }
        match kms.destroy_due(now_ms()).await {
            Ok(done) => {
                for k in done {
                    tracing::info!(key = %k.id, "key destroyed at the end of its waiting period");
                    let record = nuage_core::model::AuditRecord {
                        time: now_ms(),
                        request_id: String::new(),
                        principal: "system".into(),
                        principal_name: "key destruction schedule".into(),
                        source: String::new(),
                        method: String::new(),
                        path: String::new(),
                        action: "kms.destroy".into(),
                        resource: format!("key:{}", k.name),
                        decision: "allow".into(),
                        policies: vec!["scheduled-destruction".into()],
                        status: 200,
                        details: [("key_id".to_string(), k.id.clone())].into(),
                    };
                    if let Err(e) = audit.record(&k.org_id, record).await {
                        tracing::error!(error = %e, "audit entry of a key destruction not written");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e.detail, "scheduled key destruction failed"),
        }
    }
}
