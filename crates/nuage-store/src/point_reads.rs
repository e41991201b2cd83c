//! SQLite point reads on the caller's own thread.
//!
//! sqlx runs each SQLite connection on a thread of its own, so every query
//! is a hand-off to that thread and back: on two cores, two wake-ups and
//! context switches that cost several times the lookup itself. The one
//! read every S3 `GET` and `HEAD` makes (an object's latest version, one
//! row by index, its pages nearly always in SQLite's cache) runs here
//! instead, synchronously, on a small pool of connections that only read.
//!
//! It never waits: the connections have no busy timeout, and a busy
//! database or any other error sends the caller back to the sqlx path, so
//! this is a shortcut and never the only way to a row.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

/// Idle connections kept; more are opened under load and dropped after.
const MAX_IDLE: usize = 8;

pub(crate) struct PointReads {
    path: PathBuf,
    /// `None` once [`PointReads::close`] ran: the store is closing and its
    /// last connection must be sqlx's, which checkpoints and removes the WAL.
    idle: Mutex<Option<Vec<Connection>>>,
    /// Reads answered here rather than by the pool.
    served: AtomicU64,
}

impl PointReads {
    /// Point reads of the SQLite database file at `path`; `None` for an
    /// in-memory database, which other connections cannot see.
    pub(crate) fn for_database(path: PathBuf) -> Option<PointReads> {
        let name = path.to_string_lossy();
        if name.is_empty() || name.starts_with(":memory:") || name.contains("mode=memory") {
            return None;
        }
        Some(PointReads {
            path,
            idle: Mutex::new(Some(Vec::new())),
            served: AtomicU64::new(0),
        })
    }

    /// Runs `f` on an idle connection, opening one when none is idle.
    /// `None` after [`PointReads::close`] or on any SQLite error (logged at
    /// debug level: the caller takes the sqlx path).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let idle = {
            let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_mut()?.pop()
        };
        let conn = match idle {
            Some(c) => c,
            None => match self.open() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "point-read connection failed to open");
                    return None;
                }
            },
        };
        let out = f(&conn);
        {
            let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pool) = guard.as_mut() {
                if pool.len() < MAX_IDLE {
                    pool.push(conn);
                }
            }
        }
        match out {
            Ok(v) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Some(v)
            }
            Err(e) if is_busy(&e) => {
                tracing::debug!(error = %e, "point read busy, the pool answers");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "point read failed, the pool answers");
                None
            }
        }
    }

    /// Reads answered here since the store opened.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        Ok(conn)
    }

    /// Drops every idle connection and refuses new reads.
    pub(crate) fn close(&self) {
        let idle = self
            .idle
            .lock()
            .map(|mut g| g.take())
            .unwrap_or_else(|p| p.into_inner().take());
        drop(idle);
    }
}

/// A lock held elsewhere: expected now and then, not a fault.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_another_connection_committed_and_stops_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('one');",
            )
            .unwrap();
        let reads = PointReads::for_database(path).unwrap();
        let read = || {
            reads.with(|c| {
                c.query_row("SELECT group_concat(v) FROM t", [], |r| {
                    r.get::<_, String>(0)
                })
            })
        };
        assert_eq!(read().as_deref(), Some("one"));
        writer.execute("INSERT INTO t VALUES ('two')", []).unwrap();
        assert_eq!(read().as_deref(), Some("one,two"));
        assert_eq!(reads.served(), 2);
        // A read-only connection: a write is an error, reported as None.
        assert_eq!(
            reads.with(|c| c.execute("INSERT INTO t VALUES ('x')", [])),
            None
        );
        reads.close();
        assert_eq!(read(), None);
    }

    #[test]
    fn an_in_memory_database_has_no_point_reads() {
        assert!(PointReads::for_database(PathBuf::from(":memory:")).is_none());
    }
}
