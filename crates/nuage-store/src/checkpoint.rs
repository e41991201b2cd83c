//! Checkpoints of SQLite's write-ahead log, off the write path.
//!
//! By default SQLite checkpoints inside the `COMMIT` that pushes the WAL
//! past 1,000 pages: the single write connection then copies up to 4 MiB
//! into the database file and fsyncs it while every request waiting for
//! its audit entry waits too. Under disk load (twenty VMs being created)
//! that stall was the API's slowest percentile. Here a task with a
//! connection of its own runs a `PASSIVE` checkpoint a few times a second,
//! which blocks neither the readers nor the writer; the write connection
//! checkpoints by itself only if this task falls far behind
//! ([`WRITER_CHECKPOINT_PAGES`]).

use std::sync::Weak;
use std::time::Duration;

use tokio::task::JoinHandle;

use sqlx::any::AnyConnectOptions;
use sqlx::AnyPool;
use sqlx::{Connection, Executor, Row};

/// The write connection's own checkpoint threshold (`wal_autocheckpoint`),
/// in pages: 64 MiB of WAL, a safety net only.
pub(crate) const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// How often the background checkpoint runs.
const PERIOD: Duration = Duration::from_millis(250);

/// Runs `PASSIVE` checkpoints every [`PERIOD`] on a connection of its own
/// until the store's write pool closes ([`Store::close`](crate::Store::close)
/// waits for the returned task) or `alive` can no longer be upgraded
/// (every clone of the store is gone).
pub(crate) fn spawn<T: Send + Sync + 'static>(
    connect: AnyConnectOptions,
    alive: Weak<T>,
    write: AnyPool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = match sqlx::AnyConnection::connect_with(&connect).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpointer: cannot connect; the writer checkpoints alone");
                return;
            }
        };
        if let Err(e) = conn.execute("PRAGMA busy_timeout = 10000").await {
            tracing::warn!(error = %e, "WAL checkpointer: cannot configure its connection");
        }
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closed = write.close_event();
        tokio::pin!(closed);
        // Only the close event is kept: the pool itself must not outlive
        // the store's last clone because of this task.
        drop(write);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut closed => break,
            }
            if alive.strong_count() == 0 {
                break;
            }
            match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_optional(&mut conn)
                .await
            {
                Ok(Some(row)) => {
                    let busy: i64 = row.try_get(0).unwrap_or(0);
                    if busy != 0 {
                        tracing::debug!("WAL checkpoint skipped: database busy");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        let _ = conn.close().await;
    })
}
