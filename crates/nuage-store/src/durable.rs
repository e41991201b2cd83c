//! Group commit of SQLite's write-ahead log to disk.
//!
//! With `synchronous=FULL` SQLite fsyncs its WAL inside every `COMMIT`,
//! while the single write connection waits: a project creation then pays
//! one fsync for its own transaction and another for its audit entry, and
//! no other write can start meanwhile. Instead every connection runs
//! `synchronous=NORMAL` (commits are atomic and survive a process crash;
//! only power loss can drop the newest ones) and whoever acknowledges a
//! write calls [`Store::sync_committed`](crate::Store::sync_committed):
//! it returns once an fsync of the WAL that *started after the call* has
//! finished, so everything committed before the call is on disk. Callers
//! that arrive while an fsync runs start a second one at once (up to
//! [`MAX_RUNNING`]) and later ones share it, and the write connection
//! commits the next transactions while the disk works.
//!
//! Every acknowledged API request waits for its audit entry, which is
//! committed after the request's own writes on the same connection, so the
//! audit writer's call covers both. If the WAL file does not exist, nothing
//! is pending in it: SQLite removes it only after a full checkpoint, which
//! syncs the database file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nuage_core::{ApiError, ApiResult};
use tokio::sync::Notify;

/// fsyncs that may run at once. A caller that arrives while one runs does
/// not wait for it to finish before starting its own (which would cost it
/// up to two fsync times when the disk is slow): it starts a second one at
/// once, unless this many already run.
const MAX_RUNNING: usize = 2;

#[derive(Default)]
pub(crate) struct WalSync {
    /// `None`: every commit is already as durable as configured
    /// (PostgreSQL, or SQLite with `NORMAL` asked for).
    wal: Option<PathBuf>,
    /// Tickets handed out: one per call, taken after the caller's commit.
    requested: AtomicU64,
    /// Highest ticket covered by a finished fsync.
    synced: AtomicU64,
    state: Mutex<State>,
    /// Woken whenever an fsync finishes.
    finished: Notify,
}

#[derive(Default)]
struct State {
    /// Highest ticket covered by an fsync started so far (running or done).
    started: u64,
    running: usize,
    /// Most fsyncs that ever ran at once, and how many ran in all.
    peak_running: usize,
    runs: u64,
    /// `(device, inode)` of the WAL file whose directory entry was synced.
    last_file: Option<(u64, u64)>,
}

impl WalSync {
    pub(crate) fn for_database(db: PathBuf) -> WalSync {
        let mut wal = db.into_os_string();
        wal.push("-wal");
        WalSync {
            wal: Some(PathBuf::from(wal)),
            ..WalSync::default()
        }
    }

    /// fsyncs started since the store opened.
    pub(crate) fn runs(&self) -> u64 {
        self.state().runs
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn sync(&self) -> ApiResult<()> {
        let Some(path) = &self.wal else {
            return Ok(());
        };
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let run = {
                let mut st = self.state();
                if self.synced.load(Ordering::Acquire) >= ticket {
                    return Ok(());
                }
                if st.started < ticket && st.running < MAX_RUNNING {
                    // Every ticket up to `upto` was taken after its commit
                    // and before this fsync starts, so it covers them all.
                    let upto = self.requested.load(Ordering::Acquire);
                    st.started = st.started.max(upto);
                    st.running += 1;
                    st.peak_running = st.peak_running.max(st.running);
                    st.runs += 1;
                    Some((upto, st.last_file))
                } else {
                    None
                }
            };
            let Some((upto, seen)) = run else {
                // An fsync that covers this ticket runs, or too many do.
                finished.await;
                continue;
            };
            let path = path.clone();
            let result = tokio::task::spawn_blocking(move || fsync_wal(&path, seen))
                .await
                .map_err(|e| ApiError::internal(format!("WAL sync task failed: {e}")))
                .and_then(|r| r);
            {
                let mut st = self.state();
                st.running -= 1;
                match &result {
                    Ok(file) => {
                        if file.is_some() {
                            st.last_file = *file;
                        }
                        self.synced.fetch_max(upto, Ordering::AcqRel);
                    }
                    // Whoever waited on this fsync starts another.
                    Err(_) => st.started = self.synced.load(Ordering::Acquire),
                }
            }
            self.finished.notify_waiters();
            return result.map(|_| ());
        }
    }
}

/// fsyncs the WAL file (and its directory the first time a given file is
/// seen, so a newly created WAL's name is durable too). Returns the file's
/// `(device, inode)`.
fn fsync_wal(path: &std::path::Path, seen: Option<(u64, u64)>) -> ApiResult<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let failed = |e: std::io::Error| {
        ApiError::unavailable(format!("cannot flush the database log to disk: {e}"))
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    file.sync_data().map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    let id = (meta.dev(), meta.ino());
    if seen != Some(id) {
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(failed)?;
        }
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` callers of `sync` at once; every one must succeed.
    async fn sync_together(sync: &std::sync::Arc<WalSync>, n: usize) {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let sync = sync.clone();
                tokio::spawn(async move { sync.sync().await })
            })
            .collect();
        for c in calls {
            c.await.expect("task").expect("sync");
        }
    }

    #[tokio::test]
    async fn concurrent_callers_all_return_once_the_wal_is_flushed() {
        let dir = std::env::temp_dir().join(format!("nuage-walsync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sync = std::sync::Arc::new(WalSync::for_database(dir.join("db")));
        // No WAL file yet: nothing is pending.
        sync.sync().await.expect("sync without a WAL");
        std::fs::write(dir.join("db-wal"), b"frames").expect("wal");
        sync_together(&sync, 16).await;
        assert_eq!(sync.synced.load(Ordering::Acquire), 17);
        assert!(sync.state().last_file.is_some(), "the WAL file was seen");
        assert_eq!(sync.state().running, 0);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Callers share fsyncs, and no more than [`MAX_RUNNING`] run at once
    /// however many callers arrive together.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_most_two_fsyncs_run_at_once_and_callers_share_them() {
        let dir = tempfile::tempdir().expect("dir");
        let sync = std::sync::Arc::new(WalSync::for_database(dir.path().join("db")));
        std::fs::write(dir.path().join("db-wal"), vec![7u8; 1 << 20]).expect("wal");
        for _ in 0..5 {
            sync_together(&sync, 64).await;
        }
        let st = sync.state();
        assert_eq!(sync.synced.load(Ordering::Acquire), 5 * 64);
        assert!(
            (1..=MAX_RUNNING).contains(&st.peak_running),
            "{} fsyncs ran at once",
            st.peak_running
        );
        assert!(
            st.runs >= 5 && st.runs < 5 * 64,
            "{} fsyncs for 320 callers",
            st.runs
        );
        assert_eq!(st.running, 0);
    }
}
