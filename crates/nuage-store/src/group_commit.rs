//! Group commit of object versions.
//!
//! Concurrent PUTs hand their rows to one task, which writes every PUT that
//! queued while the previous group committed in a single transaction, each
//! under its own savepoint when a quota applies: a refused condition or
//! quota rolls back that PUT alone, and the commit (with its fsync) is paid
//! once per group instead of once per object. The data key of each version
//! rides in the same group.
//!
//! When every PUT of a group goes to a different key of a bucket without
//! versioning or quotas — the common case — the group is written with a
//! few multi-row statements rather than four statements per PUT.
//!
//! A group that fails as a whole — a unique-key race with another server
//! sharing PostgreSQL, say — is retried one PUT per transaction, so one
//! PUT's trouble never fails its neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use nuage_core::{ApiError, ApiResult};
use sqlx::{AnyPool, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::kms::DataKeyRow;
use crate::objects::{put_batch_on, put_on, BatchPut, ObjectRow, WriteIf};
use crate::versions::{bucket_terms, BucketTerms, Placed, Versioning};
use crate::{db_err, is_unique_violation};

/// The most PUTs one transaction carries.
const MAX_GROUP: usize = 128;

struct Job {
    dek: Option<DataKeyRow>,
    row: ObjectRow,
    cond: WriteIf,
    reply: oneshot::Sender<ApiResult<Placed>>,
}

/// The queue of the committer task, started on first use (it ends when the
/// last handle of the store is dropped).
#[derive(Clone, Default)]
pub(crate) struct Committer {
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
    stats: Arc<Counts>,
}

/// What the committer has done since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Object versions committed (or refused) through the committer.
    pub puts: u64,
    /// Transactions it committed them in.
    pub transactions: u64,
}

#[derive(Default)]
struct Counts {
    puts: AtomicU64,
    transactions: AtomicU64,
}

impl Counts {
    fn add(&self, puts: usize, transactions: usize) {
        self.puts.fetch_add(puts as u64, Ordering::Relaxed);
        self.transactions
            .fetch_add(transactions as u64, Ordering::Relaxed);
    }
}

impl Committer {
    pub(crate) async fn put(
        &self,
        write: &AnyPool,
        dek: Option<&DataKeyRow>,
        row: &ObjectRow,
        cond: &WriteIf,
    ) -> ApiResult<Placed> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(run(write.clone(), rx, self.stats.clone()));
            tx
        });
        let (reply, done) = oneshot::channel();
        queue
            .send(Job {
                dek: dek.cloned(),
                row: row.clone(),
                cond: cond.clone(),
                reply,
            })
            .await
            .map_err(|_| ApiError::unavailable("the object committer stopped"))?;
        done.await
            .map_err(|_| ApiError::unavailable("the object committer stopped"))?
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            puts: self.stats.puts.load(Ordering::Relaxed),
            transactions: self.stats.transactions.load(Ordering::Relaxed),
        }
    }
}

async fn run(write: AnyPool, mut rx: mpsc::Receiver<Job>, stats: Arc<Counts>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let results = if group.len() == 1 {
            None
        } else {
            match commit_group(&write, &group).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(error = %e, size = group.len(), "group commit failed; one by one");
                    None
                }
            }
        };
        match results {
            Some(results) => {
                stats.add(group.len(), 1);
                for (j, r) in group.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            }
            None => {
                stats.add(group.len(), group.len());
                for j in group {
                    let r = commit_alone(&write, &j).await;
                    let _ = j.reply.send(r);
                }
            }
        }
    }
}

async fn commit_group(
    write: &AnyPool,
    group: &[Job],
) -> Result<Vec<ApiResult<Placed>>, sqlx::Error> {
    let mut tx = write.begin().await?;
    let mut terms: HashMap<&str, BucketTerms> = HashMap::new();
    for j in group {
        if !terms.contains_key(j.row.bucket_id.as_str()) {
            let t = bucket_terms(&mut tx, &j.row.bucket_id).await?;
            terms.insert(&j.row.bucket_id, t);
        }
    }
    let plain = terms
        .values()
        .all(|t| t.mode == Versioning::Off && !t.quotas);
    let mut keys = HashSet::with_capacity(group.len());
    if plain
        && group
            .iter()
            .all(|j| keys.insert((&j.row.bucket_id, &j.row.key)))
    {
        let puts: Vec<BatchPut<'_>> = group
            .iter()
            .map(|j| BatchPut {
                dek: j.dek.as_ref(),
                row: &j.row,
                cond: &j.cond,
            })
            .collect();
        let out = put_batch_on(&mut tx, &puts).await?;
        tx.commit().await?;
        return Ok(out);
    }
    let mut out = Vec::with_capacity(group.len());
    for j in group {
        let Some(&t) = terms.get(j.row.bucket_id.as_str()) else {
            return Err(sqlx::Error::Protocol("bucket terms not read".into()));
        };
        if !t.quotas {
            // Without a quota, a PUT is refused (a failed condition) only
            // before it writes anything: no savepoint to roll back to.
            out.push(put_on(&mut tx, j.dek.as_ref(), &j.row, &j.cond, Some(t)).await?);
            continue;
        }
        let mut one = tx.begin().await?;
        match put_on(&mut one, j.dek.as_ref(), &j.row, &j.cond, Some(t)).await? {
            Ok(placed) => {
                one.commit().await?;
                out.push(Ok(placed));
            }
            Err(refused) => {
                one.rollback().await?;
                out.push(Err(refused));
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

async fn commit_alone(write: &AnyPool, j: &Job) -> ApiResult<Placed> {
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = async {
            let mut tx = write.begin().await?;
            let r = put_on(&mut tx, j.dek.as_ref(), &j.row, &j.cond, None).await?;
            if r.is_ok() {
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(r)
        };
        match attempt.await {
            Err(e) if is_unique_violation(&e) && tries < 5 => continue,
            Err(e) => return Err(db_err(e)),
            Ok(r) => return r,
        }
    }
}
