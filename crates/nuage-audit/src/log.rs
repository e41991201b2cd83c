//! The audit log service: records every API decision before the response
//! leaves, keeps one Merkle tree per organization in the metadata store and
//! signs checkpoints in the background.
//!
//! Recording uses group commit: requests hand their entry to one writer task
//! and wait; the writer appends everything queued in one transaction, so a
//! burst of requests costs one commit instead of one each. Every entry is
//! committed before its request is answered (a killed process loses none).
//! A request that may have changed something also waits for the store's
//! group fsync (`Store::sync_committed`), which the writer starts after each
//! batch while it already commits the next one; since the request's own
//! writes were committed before its entry, that fsync makes them durable
//! too. A read (`GET`, `HEAD`, `OPTIONS`) changed nothing a power loss could
//! lose, so it is answered once its entry is committed, and the same fsync,
//! started right away, makes the entry durable a few milliseconds later.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nuage_core::model::{AuditCheckpoint, AuditRecord};
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_store::{AuditAppend, AuditFilter, AuditRow, Store, StoredCheckpoint};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::merkle::{self, CompactRange, Hash};
use crate::note::{Checkpoint, NoteSigner};

/// Log of the operator realm; organizations' logs use their id.
pub const PLATFORM_LOG: &str = "platform";

const MAX_BATCH: usize = 2048;
/// How long the audit entries of reads may stay committed but not yet on
/// disk. Every batch of reads used to start an fsync that no request
/// waited for: 800 a second under a GET load, each a trip through the
/// kernel and the disk queue.
const READ_SYNC_AFTER: Duration = Duration::from_millis(50);

/// Interior nodes below this level are not stored: seven in eight interior
/// nodes sit there, and a proof needs at most three of them, each rebuilt
/// from at most eight leaf hashes.
const FIRST_STORED_LEVEL: u32 = 4;

/// An entry ready to append: serialised and hashed by the request's own
/// task, so the single writer only does the database work.
struct Pending {
    append: AuditAppend,
    ack: Ack,
    reply: oneshot::Sender<ApiResult<i64>>,
}

/// When a recorded entry is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// Once committed: the entry of a read.
    Committed,
    /// Once on disk: the entry of anything that may have written.
    Durable,
}

impl Ack {
    fn of(record: &AuditRecord) -> Ack {
        match record.method.as_str() {
            "GET" | "HEAD" | "OPTIONS" => Ack::Committed,
            _ => Ack::Durable,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Prefix of every log's origin line, e.g. `nuage.example.eu`.
    pub origin_prefix: String,
    pub checkpoint_every: Duration,
    pub retention: Duration,
}

#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    signer: Arc<NoteSigner>,
    queue: mpsc::Sender<Pending>,
    origin_prefix: String,
}

/// Background tasks of the log; stop them with [`AuditTasks::shutdown`].
pub struct AuditTasks {
    writer: JoinHandle<()>,
    signer: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl AuditTasks {
    /// Waits until every queued entry is written (all [`AuditLog`] clones
    /// must be dropped first), then signs a last checkpoint.
    pub async fn shutdown(self) {
        let _ = self.writer.await;
        let _ = self.stop.send(true);
        let _ = self.signer.await;
    }
}

/// The canonical bytes of a record: what is hashed, stored and exported.
pub fn canonical_bytes(record: &AuditRecord) -> ApiResult<Vec<u8>> {
    canonical_text(record).map(String::into_bytes)
}

/// An [`AuditRecord`] with its fields in sorted order, so serialising it
/// writes the canonical text (compact JSON, keys sorted, as
/// [`crate::verify::canonical_entry_bytes`] produces from any JSON value)
/// in one pass, without building and sorting a JSON tree per request. A
/// test compares both on records of every shape.
#[derive(serde::Serialize)]
struct Sorted<'a> {
    action: &'a str,
    decision: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    details: &'a BTreeMap<String, String>,
    method: &'a str,
    path: &'a str,
    policies: &'a [String],
    principal: &'a str,
    principal_name: &'a str,
    request_id: &'a str,
    resource: &'a str,
    source: &'a str,
    status: u16,
    time: String,
}

fn canonical_text(r: &AuditRecord) -> ApiResult<String> {
    let sorted = Sorted {
        action: &r.action,
        decision: &r.decision,
        details: &r.details,
        method: &r.method,
        path: &r.path,
        policies: &r.policies,
        principal: &r.principal,
        principal_name: &r.principal_name,
        request_id: &r.request_id,
        resource: &r.resource,
        source: &r.source,
        status: r.status,
        time: nuage_core::time::to_rfc3339(r.time),
    };
    serde_json::to_string(&sorted).map_err(|e| ApiError::internal(e.to_string()))
}

fn bad_frontier(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("audit log head is corrupt: {e}"))
}

impl AuditLog {
    pub fn start(store: Store, signer: NoteSigner, cfg: AuditConfig) -> (AuditLog, AuditTasks) {
        let (queue, rx) = mpsc::channel(65_536);
        let signer = Arc::new(signer);
        let log = AuditLog {
            store: store.clone(),
            signer: signer.clone(),
            queue,
            origin_prefix: cfg.origin_prefix.clone(),
        };
        let writer = tokio::spawn(write_loop(store, rx));
        let (stop, stop_rx) = watch::channel(false);
        let signer_task = tokio::spawn(sign_loop(log.without_queue(), cfg, stop_rx));
        (
            log,
            AuditTasks {
                writer,
                signer: signer_task,
                stop,
            },
        )
    }

    /// A handle for the signer task that does not keep the writer alive.
    fn without_queue(&self) -> SignerHandle {
        SignerHandle {
            store: self.store.clone(),
            signer: self.signer.clone(),
            origin_prefix: self.origin_prefix.clone(),
        }
    }

    pub fn origin(&self, log_id: &str) -> String {
        origin(&self.origin_prefix, log_id)
    }

    /// The signed-note verifier key tenants keep to check checkpoints.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_string()
    }

    /// Appends `record` to `log_id` and returns its index once committed
    /// (a read's entry) or once on disk (any other entry).
    pub async fn record(&self, log_id: &str, record: AuditRecord) -> ApiResult<i64> {
        let ack = Ack::of(&record);
        let body = canonical_text(&record)?;
        let append = AuditAppend {
            log_id: log_id.to_string(),
            leaf_hash: hex::encode(merkle::leaf_hash(body.as_bytes())),
            body,
            time: record.time,
            principal: record.principal,
            action: record.action,
            decision: record.decision,
        };
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending { append, ack, reply })
            .await
            .map_err(|_| ApiError::unavailable("the audit log is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::unavailable("the audit log writer stopped"))?
    }

    /// Signs the log's current head now (or returns the checkpoint that
    /// already covers it).
    pub async fn checkpoint_now(&self, log_id: &str) -> ApiResult<Option<AuditCheckpoint>> {
        self.without_queue().checkpoint(log_id).await
    }

    pub async fn latest_checkpoint(&self, log_id: &str) -> ApiResult<Option<AuditCheckpoint>> {
        Ok(self
            .store
            .audit_checkpoint_latest(log_id)
            .await?
            .map(to_api))
    }

    pub async fn checkpoint_at(
        &self,
        log_id: &str,
        size: i64,
    ) -> ApiResult<Option<AuditCheckpoint>> {
        Ok(self
            .store
            .audit_checkpoint_get(log_id, size)
            .await?
            .map(to_api))
    }

    async fn head_size(&self, log_id: &str) -> ApiResult<u64> {
        Ok(self
            .store
            .audit_head(log_id)
            .await?
            .map(|(s, _)| s as u64)
            .unwrap_or(0))
    }

    async fn fetch(
        &self,
        log_id: &str,
        coords: Vec<(u32, u64)>,
    ) -> ApiResult<HashMap<(u32, u64), Hash>> {
        let mut wanted = Vec::with_capacity(coords.len());
        for &(level, index) in &coords {
            if is_stored(level) {
                wanted.push((level, index));
            } else {
                wanted.extend(leaves_under(level, index).map(|leaf| (0, leaf)));
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let raw = self.store.audit_nodes(log_id, &wanted).await?;
        let mut stored = HashMap::with_capacity(raw.len());
        for (k, v) in raw {
            stored.insert(k, merkle::parse_hex_hash(&v).map_err(bad_frontier)?);
        }
        let mut out = HashMap::with_capacity(coords.len());
        for (level, index) in coords {
            let hash = if is_stored(level) {
                stored.get(&(level, index)).copied()
            } else {
                subtree_hash(level, index, &stored)
            };
            let Some(hash) = hash else {
                return Err(ApiError::internal(format!(
                    "audit tree node {:?} is missing from the store",
                    (level, index)
                )));
            };
            out.insert((level, index), hash);
        }
        Ok(out)
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion_proof(
        &self,
        log_id: &str,
        index: u64,
        size: u64,
    ) -> ApiResult<Vec<Hash>> {
        let head = self.head_size(log_id).await?;
        if size > head || index >= size {
            return Err(ApiError::bad_request(
                "invalid_proof_request",
                format!("need index < size <= {head} (the log's size)"),
            ));
        }
        let nodes = self
            .fetch(log_id, merkle::nodes_needed_for_inclusion(index, size))
            .await?;
        merkle::inclusion_proof(index, size, &mut |l, i| {
            nodes.get(&(l, i)).copied().unwrap_or([0; 32])
        })
        .map_err(|e| ApiError::bad_request("invalid_proof_request", e.to_string()))
    }

    /// Proof that the tree of `new` entries extends the tree of `old`.
    pub async fn consistency_proof(
        &self,
        log_id: &str,
        old: u64,
        new: u64,
    ) -> ApiResult<Vec<Hash>> {
        let head = self.head_size(log_id).await?;
        if new > head || old > new {
            return Err(ApiError::bad_request(
                "invalid_proof_request",
                format!("need from <= to <= {head} (the log's size)"),
            ));
        }
        let nodes = self
            .fetch(log_id, merkle::nodes_needed_for_consistency(old, new))
            .await?;
        merkle::consistency_proof(old, new, &mut |l, i| {
            nodes.get(&(l, i)).copied().unwrap_or([0; 32])
        })
        .map_err(|e| ApiError::bad_request("invalid_proof_request", e.to_string()))
    }

    pub async fn list(
        &self,
        log_id: &str,
        f: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> ApiResult<Vec<AuditRow>> {
        self.store.audit_list(log_id, f, after, limit).await
    }

    /// Writes a JSON Lines export of the entries matching `f` that the
    /// newest checkpoint covers, each with its inclusion proof (a checkpoint
    /// is signed first if entries are not covered yet).
    pub async fn export(&self, log_id: &str, f: &AuditFilter) -> ApiResult<String> {
        // A log with no entry yet (a new organization) exports as the empty
        // tree: a valid export, signed like any other, that verifies.
        let cp = match self.checkpoint_now(log_id).await? {
            Some(cp) => cp,
            None => self.without_queue().empty(log_id)?,
        };
        let size = cp.size as u64;
        let complete = f.since.is_none()
            && f.until.is_none()
            && f.principal.is_none()
            && f.action.is_none()
            && f.decision.is_none()
            && f.from_index.is_none();
        let mut body = String::new();
        let mut pruned = false;
        let mut after = None;
        'pages: loop {
            let rows = self.store.audit_list(log_id, f, after, 1000).await?;
            let more = rows.len() > 1000;
            for row in rows.iter().take(1000) {
                if row.index as u64 >= size {
                    break 'pages;
                }
                after = Some(row.index);
                // Retention removed the body: the entry cannot be shown, so
                // the export no longer claims to be complete.
                let Some(text) = &row.body else {
                    pruned = true;
                    continue;
                };
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| ApiError::internal(e.to_string()))?;
                let proof = self.inclusion_proof(log_id, row.index as u64, size).await?;
                let leaf = merkle::parse_hex_hash(&row.leaf_hash).map_err(bad_frontier)?;
                body.push_str(&crate::verify::export_line_with_leaf(
                    row.index as u64,
                    &value,
                    &leaf,
                    &proof,
                ));
                body.push('\n');
            }
            if !more {
                break;
            }
        }
        let mut out = crate::verify::export_header(&cp.origin, &cp.note, complete && !pruned);
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }
}

fn origin(prefix: &str, log_id: &str) -> String {
    format!("{prefix}/audit/{log_id}")
}

fn to_api(c: StoredCheckpoint) -> AuditCheckpoint {
    AuditCheckpoint {
        origin: c.note.lines().next().unwrap_or_default().to_string(),
        size: c.size,
        root_hash: c.root,
        note: c.note,
        created_at: c.created_at,
    }
}

#[derive(Clone)]
struct SignerHandle {
    store: Store,
    signer: Arc<NoteSigner>,
    origin_prefix: String,
}

impl SignerHandle {
    async fn checkpoint(&self, log_id: &str) -> ApiResult<Option<AuditCheckpoint>> {
        let Some((size, frontier)) = self.store.audit_head(log_id).await? else {
            return Ok(None);
        };
        if let Some(latest) = self.store.audit_checkpoint_latest(log_id).await? {
            if latest.size == size {
                return Ok(Some(to_api(latest)));
            }
        }
        self.sign(log_id, size, &frontier)
            .await
            .map(|c| Some(to_api(c)))
    }

    /// A signed checkpoint of the empty tree, not stored: every later tree
    /// is consistent with it, so there is nothing to keep.
    fn empty(&self, log_id: &str) -> ApiResult<AuditCheckpoint> {
        let cp = Checkpoint {
            origin: origin(&self.origin_prefix, log_id),
            size: 0,
            root: merkle::empty_root(),
        };
        let note = cp
            .sign(&self.signer)
            .map_err(|e| ApiError::internal(format!("cannot sign checkpoint: {e}")))?;
        Ok(to_api(StoredCheckpoint {
            log_id: log_id.to_string(),
            size: 0,
            root: base64_std(&cp.root),
            note,
            created_at: now_ms(),
        }))
    }

    async fn sign(&self, log_id: &str, size: i64, frontier: &str) -> ApiResult<StoredCheckpoint> {
        let range: CompactRange = serde_json::from_str(frontier).map_err(bad_frontier)?;
        if range.size != size as u64 {
            return Err(bad_frontier("size mismatch"));
        }
        let cp = Checkpoint {
            origin: origin(&self.origin_prefix, log_id),
            size: range.size,
            root: range.root(),
        };
        let note = cp
            .sign(&self.signer)
            .map_err(|e| ApiError::internal(format!("cannot sign checkpoint: {e}")))?;
        let stored = StoredCheckpoint {
            log_id: log_id.to_string(),
            size,
            root: base64_std(&cp.root),
            note,
            created_at: now_ms(),
        };
        self.store.audit_checkpoint_put(&stored).await?;
        // Another server may have signed the same size first; return theirs.
        Ok(self
            .store
            .audit_checkpoint_get(log_id, size)
            .await?
            .unwrap_or(stored))
    }

    async fn sign_all(&self) -> ApiResult<usize> {
        let heads = self.store.audit_heads_unsigned().await?;
        for (log_id, size, frontier) in &heads {
            self.sign(log_id, *size, frontier).await?;
        }
        Ok(heads.len())
    }
}

fn base64_std(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Pending>) {
    let empty = match serde_json::to_string(&CompactRange::new()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an empty audit range");
            return;
        }
    };
    let read_sync_armed = Arc::new(AtomicBool::new(false));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut appends = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            appends.push(p.append);
            replies.push((p.ack, p.reply));
        }
        let mut advance = |_: &str, size: i64, frontier: &str, leaves: &[&str]| {
            let mut range: CompactRange = serde_json::from_str(frontier).map_err(bad_frontier)?;
            if range.size != size as u64 {
                return Err(bad_frontier("size mismatch"));
            }
            let mut nodes = Vec::new();
            for leaf in leaves {
                let h = merkle::parse_hex_hash(leaf).map_err(bad_frontier)?;
                for (level, idx, hash) in range.append(h) {
                    if is_stored(level) {
                        nodes.push((level, idx, hex::encode(hash)));
                    }
                }
            }
            let text = serde_json::to_string(&range).map_err(bad_frontier)?;
            Ok((text, nodes))
        };
        let indices = match store.audit_append(&appends, &empty, &mut advance).await {
            Ok(indices) => indices,
            Err(e) => {
                tracing::error!(error = %e, "audit append failed");
                for (_, reply) in replies {
                    let _ = reply.send(Err(not_recorded()));
                }
                continue;
            }
        };
        // Committed: reads are answered now, the rest once the batch is on
        // disk, while this loop already commits the next batch.
        let mut durable = Vec::new();
        for ((ack, reply), idx) in replies.into_iter().zip(indices) {
            match ack {
                Ack::Committed => {
                    let _ = reply.send(Ok(idx));
                }
                Ack::Durable => durable.push((reply, idx)),
            }
        }
        if durable.is_empty() {
            // Reads alone wait for no fsync: one runs `READ_SYNC_AFTER`
            // later for every read batch committed until it starts.
            if !read_sync_armed.swap(true, Ordering::SeqCst) {
                let (store, armed) = (store.clone(), read_sync_armed.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(READ_SYNC_AFTER).await;
                    armed.store(false, Ordering::SeqCst);
                    if let Err(e) = store.sync_committed().await {
                        tracing::error!(error = %e, "audit entries of reads not synced to disk");
                    }
                });
            }
            continue;
        }
        let store = store.clone();
        tokio::spawn(async move {
            match store.sync_committed().await {
                Ok(()) => {
                    for (reply, idx) in durable {
                        let _ = reply.send(Ok(idx));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit entries committed but not synced to disk");
                    for (reply, _) in durable {
                        let _ = reply.send(Err(not_recorded()));
                    }
                }
            }
        });
    }
}

fn not_recorded() -> ApiError {
    ApiError::unavailable("the audit log could not record this request")
}

async fn sign_loop(handle: SignerHandle, cfg: AuditConfig, mut stop: watch::Receiver<bool>) {
    let mut last_prune = 0i64;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(cfg.checkpoint_every) => false,
            _ = stop.changed() => true,
        };
        if let Err(e) = handle.sign_all().await {
            tracing::warn!(error = %e, "checkpoint signing failed; will retry");
        }
        let now = now_ms();
        if now - last_prune > 3_600_000 {
            last_prune = now;
            let before = now - cfg.retention.as_millis() as i64;
            match handle.store.audit_prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    entries = n,
                    "audit bodies past retention removed (hashes kept)"
                ),
                Err(e) => tracing::warn!(error = %e, "audit retention pass failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Whether node `(level, _)` has a row: leaves and the levels from
/// [`FIRST_STORED_LEVEL`] up.
fn is_stored(level: u32) -> bool {
    level == 0 || level >= FIRST_STORED_LEVEL
}

/// Indices of the leaves under the perfect subtree `(level, index)`.
fn leaves_under(level: u32, index: u64) -> std::ops::Range<u64> {
    let first = index << level;
    first..first + (1 << level)
}

/// Hash of the perfect subtree `(level, index)` rebuilt from its leaves
/// (`None` if one of them is missing from `leaves`).
fn subtree_hash(level: u32, index: u64, leaves: &HashMap<(u32, u64), Hash>) -> Option<Hash> {
    let mut row = leaves_under(level, index)
        .map(|leaf| leaves.get(&(0, leaf)).copied())
        .collect::<Option<Vec<Hash>>>()?;
    while row.len() > 1 {
        row = row
            .chunks_exact(2)
            .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
            .collect();
    }
    row.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(record: &AuditRecord) -> Vec<u8> {
        let value = serde_json::to_value(record).unwrap_or_default();
        crate::verify::canonical_entry_bytes(&value)
    }

    #[test]
    fn unstored_nodes_are_rebuilt_from_their_leaves_as_the_tree_built_them() {
        let mut range = CompactRange::new();
        let mut leaves = HashMap::new();
        let mut built = Vec::new();
        for i in 0..37u64 {
            let leaf = merkle::leaf_hash(&i.to_be_bytes());
            leaves.insert((0, i), leaf);
            built.extend(range.append(leaf));
        }
        let unstored: Vec<_> = built.iter().filter(|(l, _, _)| !is_stored(*l)).collect();
        // 18 + 9 + 4 nodes of levels 1 to 3 under 37 leaves.
        assert_eq!(unstored.len(), 31);
        for (level, index, hash) in unstored {
            assert_eq!(
                subtree_hash(*level, *index, &leaves),
                Some(*hash),
                "node ({level}, {index})"
            );
        }
        leaves.remove(&(0, 5));
        assert_eq!(subtree_hash(2, 1, &leaves), None);
        assert!(subtree_hash(2, 0, &leaves).is_some());
    }

    /// An allowed request of `method` at `time`.
    fn request(method: &str, time: i64) -> AuditRecord {
        AuditRecord {
            time,
            request_id: String::new(),
            principal: "usr_1".into(),
            principal_name: String::new(),
            source: String::new(),
            method: method.into(),
            path: "/".into(),
            action: String::new(),
            resource: String::new(),
            decision: "allow".into(),
            policies: Vec::new(),
            status: 200,
            details: BTreeMap::new(),
        }
    }

    /// On SQLite `FULL`, a run of reads shares one delayed fsync instead
    /// of one per batch, and still reaches the disk soon after; a write
    /// is answered only after an fsync of its own.
    #[tokio::test]
    async fn reads_share_a_delayed_fsync_and_a_write_waits_for_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = Store::open(&url, &nuage_store::StoreOptions::default())
            .await
            .expect("store");
        let cfg = AuditConfig {
            origin_prefix: "test".into(),
            checkpoint_every: Duration::from_secs(3600),
            retention: Duration::from_secs(3600),
        };
        let signer = NoteSigner::generate("test/audit").expect("signer");
        let (log, tasks) = AuditLog::start(store.clone(), signer, cfg);
        let with = |method: &str| request(method, now_ms());
        let before = store.wal_syncs();
        // One at a time: forty batches.
        for _ in 0..40 {
            log.record(PLATFORM_LOG, with("GET")).await.expect("read");
        }
        let during = store.wal_syncs() - before;
        assert!(during < 10, "{during} fsyncs for 40 batches of reads");
        tokio::time::sleep(READ_SYNC_AFTER * 4).await;
        assert!(
            store.wal_syncs() > before,
            "the reads' entries never reached the disk"
        );
        let idle = store.wal_syncs();
        log.record(PLATFORM_LOG, with("PUT")).await.expect("write");
        assert!(
            store.wal_syncs() > idle,
            "a write was answered before an fsync"
        );
        drop(log);
        tasks.shutdown().await;
        store.close().await;
    }

    #[test]
    fn only_reads_are_answered_before_their_entry_is_on_disk() {
        let with = |method: &str| request(method, 0);
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert_eq!(Ack::of(&with(m)), Ack::Committed, "{m}");
        }
        // Writes, unknown methods and the system's own entries (no method).
        for m in ["POST", "PUT", "PATCH", "DELETE", "get", "PROPFIND", ""] {
            assert_eq!(Ack::of(&with(m)), Ack::Durable, "{m:?}");
        }
    }

    #[test]
    fn the_one_pass_canonical_text_is_the_sorted_json_of_the_record() {
        let mut details = BTreeMap::new();
        details.insert("purpose".to_string(), "s3\"quoted\"\n".to_string());
        details.insert("Key_id".to_string(), "clé ✓ \u{1}".to_string());
        details.insert("key_version".to_string(), "3".to_string());
        let full = AuditRecord {
            time: 1_764_000_000_123,
            request_id: "req_0193".into(),
            principal: "usr_1".into(),
            principal_name: "Zoé <admin>".into(),
            source: "2001:db8::1".into(),
            method: "PUT".into(),
            path: "/b/k%20ey/\\x".into(),
            action: "s3.put_object".into(),
            resource: "bucket:b/ключ".into(),
            decision: "allow".into(),
            policies: vec!["role:editor".into(), "policy:x#2".into()],
            status: 200,
            details,
        };
        let empty = AuditRecord {
            time: 0,
            request_id: String::new(),
            principal: "anonymous".into(),
            principal_name: String::new(),
            source: "unknown".into(),
            method: "GET".into(),
            path: "/".into(),
            action: "GET /".into(),
            resource: String::new(),
            decision: "error".into(),
            policies: Vec::new(),
            status: 404,
            details: BTreeMap::new(),
        };
        for r in [&full, &empty] {
            let fast = canonical_bytes(r).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&generic(r))
            );
        }
    }

    /// A log with no entry yet (a new organization's) exports as a signed
    /// empty tree that verifies as complete, rather than a 404.
    #[tokio::test]
    async fn an_empty_log_exports_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = Store::open(&url, &nuage_store::StoreOptions::default())
            .await
            .expect("store");
        let cfg = AuditConfig {
            origin_prefix: "test".into(),
            checkpoint_every: Duration::from_secs(3600),
            retention: Duration::from_secs(3600),
        };
        let signer = NoteSigner::generate("test/audit").expect("signer");
        let verifier = signer.verifier();
        let (log, tasks) = AuditLog::start(store.clone(), signer, cfg);
        let text = log
            .export("org_new", &AuditFilter::default())
            .await
            .expect("export");
        let report = crate::verify::verify_export(text.as_bytes(), &verifier).expect("verifies");
        assert!(report.is_clean(), "{:?}", report.problems);
        assert!(report.complete);
        assert_eq!((report.checkpoint.size, report.entries_checked), (0, 0));
        assert_eq!(report.checkpoint.origin, log.origin("org_new"));
        drop(log);
        tasks.shutdown().await;
        store.close().await;
    }
}
