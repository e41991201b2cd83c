//! The metadata store: one schema, two engines. Embedded SQLite (WAL) keeps a
//! single machine self-contained; PostgreSQL — or a PostgreSQL-compatible
//! distributed SQL engine — lets several control-plane processes share state.
//! We write no replication of our own: the database is the distributed engine.
//!
//! Every query is written once in portable SQL (`$n` placeholders work on both
//! engines) and runs through sqlx's `Any` driver. On SQLite all writes go
//! through a single connection, so writers queue in-process instead of failing
//! with `SQLITE_BUSY`; reads use a pool of their own, and the one point read
//! every S3 `GET` makes runs on the caller's thread (see `point_reads`).
//!
//! Methods are named noun first (`project_get`, `token_create`) and return the
//! API's error type so a conflict or a missing row reaches the client with a
//! precise code.

mod access_keys;
mod audit;
pub mod cache;
mod checkpoint;
mod compute;
mod durable;
mod group_commit;
mod groups;
mod idempotency;
mod instances;
mod kms;
mod node_tasks;
mod nodes;
mod objects;
mod oidc;
mod orgs;
mod point_reads;
mod policies;
mod principals;
mod projects;
mod role_bindings;
mod tokens;
mod versions;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nuage_core::{ApiError, ApiResult};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyPool, Executor};

pub use access_keys::AccessKeyAuth;
pub use audit::{AuditAppend, AuditFilter, AuditRow, StoredCheckpoint};
pub use compute::{ImageRow, SnapshotRow, VolumeRow};
pub use group_commit::CommitStats;
pub use idempotency::StoredResponse;
pub use instances::InstanceRow;
pub use kms::{DataKeyRow, KeyRow, KeyVersionRow, ManagerRow, RootRow};
pub use node_tasks::NodeTaskRow;
pub use nodes::{InstanceTypeRow, NodeRow, NodeUsage};
pub use objects::{
    key_hex, BucketRow, Completed, ObjectRow, PartRow, Replaced, UploadRow, WriteIf,
};
pub use oidc::PendingLogin;
pub use principals::{kind_label, Credentials};
pub use role_bindings::EffectiveBinding;
pub use tokens::{NewToken, TokenAuth};
pub use versions::{Deleted, Placed, RemovedVersion, VersionRow, Versioning, NULL_VERSION};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// SQLite durability: every acknowledged write is on disk before it is
    /// acknowledged, so it survives power loss (the WAL is fsynced in
    /// groups, see [`Store::sync_committed`]), rather than `NORMAL`
    /// (survives a process crash, may lose the last commits on power loss).
    pub sqlite_sync_full: bool,
    pub max_connections: u32,
    /// SQLite reader connections (each is a thread: more than the cores
    /// only adds context switches).
    pub sqlite_readers: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite_sync_full: true,
            max_connections: 16,
            sqlite_readers: std::thread::available_parallelism()
                .map(|n| n.get() as u32 * 2)
                .unwrap_or(4),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error(
        "the database schema is at version {found}, newer than this nuage binary knows \
         (up to {known}); run the nuage release that wrote it or a newer one"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database migration failed: {0}")]
    Migrate(String),
}

#[derive(Clone)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
    /// Bumped after every identity or access change through this process,
    /// so in-process caches of them (see `nuage-iam`) drop what they hold.
    epoch: Arc<AtomicU64>,
    /// The group committer of object versions.
    commits: group_commit::Committer,
    /// Projects read by name or id, which nearly every request does.
    projects: Arc<projects::ProjectCache>,
    /// Buckets by name with their project's name, read by every S3 request.
    buckets: Arc<objects::BucketCache>,
    /// Makes committed writes durable before they are acknowledged.
    wal_sync: Arc<durable::WalSync>,
    /// SQLite: each audit log's `(size, frontier)` as this process last
    /// committed it.
    audit_heads: Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, String)>>>,
    /// SQLite on a file: the S3 read path's lookups on the caller's thread.
    point_reads: Option<Arc<point_reads::PointReads>>,
    /// SQLite: the WAL checkpointer, awaited by [`Store::close`].
    checkpointer: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Store {
    /// Opens (creating if needed) the database at `url`: `sqlite://path` or
    /// `postgres://…`, then applies pending migrations.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Open(
                "database URL must start with sqlite:// or postgres://".into(),
            ));
        };
        let connect =
            AnyConnectOptions::from_str(url).map_err(|e| StoreError::Open(e.to_string()))?;
        let store = match backend {
            Backend::Sqlite => {
                // `FULL` durability is [`Store::sync_committed`]'s group
                // fsync, not a sync inside each commit (see `durable`).
                let file = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Open(e.to_string()))?
                    .get_filename()
                    .to_path_buf();
                let point_reads = point_reads::PointReads::for_database(file.clone()).map(Arc::new);
                let wal_sync = if opts.sqlite_sync_full {
                    durable::WalSync::for_database(file)
                } else {
                    durable::WalSync::default()
                };
                // Checkpoints run on a connection of their own (see
                // `checkpoint`); the writer's threshold is a safety net.
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                     PRAGMA secure_delete = ON; PRAGMA wal_autocheckpoint = {};",
                    checkpoint::WRITER_CHECKPOINT_PAGES
                );
                let pragmas: Arc<str> = pragmas.into();
                let pool = |max: u32| {
                    let pragmas = pragmas.clone();
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(move |conn, _| {
                            let pragmas = pragmas.clone();
                            Box::pin(async move {
                                conn.execute(&*pragmas).await?;
                                Ok(())
                            })
                        })
                };
                let write = pool(1)
                    .connect_with(connect.clone())
                    .await
                    .map_err(|e| StoreError::Open(e.to_string()))?;
                let read = pool(opts.sqlite_readers.max(1))
                    .connect_with(connect.clone())
                    .await
                    .map_err(|e| StoreError::Open(e.to_string()))?;
                let wal_sync = Arc::new(wal_sync);
                let checkpointer =
                    checkpoint::spawn(connect, Arc::downgrade(&wal_sync), write.clone());
                Store {
                    read,
                    write,
                    backend,
                    epoch: Arc::default(),
                    commits: Default::default(),
                    projects: Arc::default(),
                    buckets: Arc::default(),
                    wal_sync,
                    audit_heads: Arc::default(),
                    point_reads,
                    checkpointer: Arc::new(std::sync::Mutex::new(Some(checkpointer))),
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(connect)
                    .await
                    .map_err(|e| StoreError::Open(e.to_string()))?;
                Store {
                    read: pool.clone(),
                    write: pool,
                    backend,
                    epoch: Arc::default(),
                    commits: Default::default(),
                    projects: Arc::default(),
                    buckets: Arc::default(),
                    wal_sync: Arc::default(),
                    audit_heads: Arc::default(),
                    point_reads: None,
                    checkpointer: Arc::default(),
                }
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match MIGRATOR.run(&self.write).await {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(found)) => Err(StoreError::SchemaTooNew {
                found,
                known: Self::schema_version(),
            }),
            Err(e) => Err(StoreError::Migrate(e.to_string())),
        }
    }

    /// Newest schema version this binary knows.
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The change epoch of this process (see [`Store::bump_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks, after commit, a change to what identity and access caches
    /// hold (principals, tokens, groups, bindings, policies, organizations).
    pub fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Returns once everything committed before the call is on disk (with
    /// SQLite `FULL`; otherwise at once: PostgreSQL commits are durable
    /// and SQLite `NORMAL` accepts losing the newest on power loss). Call
    /// it after committing and before acknowledging.
    pub async fn sync_committed(&self) -> ApiResult<()> {
        self.wal_sync.sync().await
    }

    /// fsyncs of the WAL started by [`Store::sync_committed`] since the
    /// store opened (0 where commits are durable by themselves).
    pub fn wal_syncs(&self) -> u64 {
        self.wal_sync.runs()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Cheap liveness query for `/readyz`.
    pub async fn ping(&self) -> Result<(), ApiError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Closes every connection, the WAL checkpointer's included.
    /// How many reads [`point_reads`] answered on the caller's thread (0 on
    /// PostgreSQL and in-memory SQLite).
    pub fn point_reads_served(&self) -> u64 {
        self.point_reads.as_ref().map_or(0, |p| p.served())
    }

    pub async fn close(&self) {
        if let Some(p) = &self.point_reads {
            p.close();
        }
        self.write.close().await;
        self.read.close().await;
        let checkpointer = self
            .checkpointer
            .lock()
            .map(|mut g| g.take())
            .unwrap_or_else(|p| p.into_inner().take());
        if let Some(task) = checkpointer {
            let _ = task.await;
        }
    }
}

/// Maps a database failure to an API error without leaking SQL or values.
pub(crate) fn db_err(e: sqlx::Error) -> ApiError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::unavailable("the metadata store is unavailable; retry later")
                .with_retry_after(1)
        }
        other => {
            tracing::error!(error = %other, "database error");
            ApiError::internal("internal database error")
        }
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.code()
                    .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
                || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

/// Maps an insert failure: a unique violation means the name is taken.
pub(crate) fn insert_err<'a>(
    kind: &str,
    name: &'a str,
) -> impl FnOnce(sqlx::Error) -> ApiError + 'a {
    let kind = kind.to_string();
    move |e| {
        if is_unique_violation(&e) {
            ApiError::already_exists(&kind, name)
        } else {
            db_err(e)
        }
    }
}

pub(crate) fn json_text<T: serde::Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|e| ApiError::internal(format!("cannot encode: {e}")))
}

pub(crate) fn from_json_text<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}
