//! Storage of the per-organization Merkle audit logs. The tree arithmetic
//! lives in `nuage-audit`; this module keeps the rows and serialises appends:
//! the log head row is locked (a no-op `UPDATE … RETURNING`) inside the
//! append transaction, so several servers sharing one PostgreSQL still give
//! every entry a unique, gap-free index.

use std::collections::HashMap;

use nuage_core::ApiResult;
use sqlx::any::AnyRow;
use sqlx::{QueryBuilder, Row};

use crate::{db_err, Store};

/// One entry to append.
#[derive(Debug, Clone)]
pub struct AuditAppend {
    pub log_id: String,
    /// Hex SHA-256 leaf hash of `body`.
    pub leaf_hash: String,
    pub body: String,
    pub time: i64,
    pub principal: String,
    pub action: String,
    pub decision: String,
}

/// What the tree code returns when a log grows: its new compact range and the
/// interior nodes the new leaves completed, as `(level, index, hex hash)`.
pub type Advance = (String, Vec<(u32, u64, String)>);

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub index: i64,
    pub leaf_hash: String,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub decision: Option<String>,
    pub from_index: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub log_id: String,
    pub size: i64,
    pub root: String,
    pub note: String,
    pub created_at: i64,
}

fn row_to_checkpoint(r: &AnyRow) -> Result<StoredCheckpoint, sqlx::Error> {
    Ok(StoredCheckpoint {
        log_id: r.try_get("log_id")?,
        size: r.try_get("size")?,
        root: r.try_get("root")?,
        note: r.try_get("note")?,
        created_at: r.try_get("created_at")?,
    })
}

const CHUNK: usize = 400;

impl Store {
    /// Appends entries (possibly to several logs) in one transaction and
    /// returns each entry's index, in input order. `advance(log_id, size,
    /// frontier, new_leaf_hashes)` computes the log's new compact range.
    pub async fn audit_append(
        &self,
        entries: &[AuditAppend],
        empty_frontier: &str,
        advance: &mut (dyn FnMut(&str, i64, &str, &[&str]) -> ApiResult<Advance> + Send),
    ) -> ApiResult<Vec<i64>> {
        let mut by_log: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match by_log.iter_mut().find(|(l, _)| *l == e.log_id) {
                Some((_, v)) => v.push(i),
                None => by_log.push((&e.log_id, vec![i])),
            }
        }
        let mut indices = vec![0i64; entries.len()];
        let mut tx = self.write.begin().await.map_err(db_err)?;
        for (log_id, members) in by_log {
            let lock =
                "UPDATE audit_heads SET size = size WHERE log_id = $1 RETURNING size, frontier";
            let mut head = sqlx::query(lock)
                .bind(log_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            if head.is_none() {
                sqlx::query(
                    "INSERT INTO audit_heads (log_id, size, frontier) VALUES ($1, 0, $2) \
                     ON CONFLICT (log_id) DO NOTHING",
                )
                .bind(log_id)
                .bind(empty_frontier)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                head = sqlx::query(lock)
                    .bind(log_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            let Some(head) = head else {
                return Err(nuage_core::ApiError::internal("audit log head missing"));
            };
            let size: i64 = head.try_get("size").map_err(db_err)?;
            let frontier: String = head.try_get("frontier").map_err(db_err)?;
            let leaves: Vec<&str> = members
                .iter()
                .map(|&i| entries[i].leaf_hash.as_str())
                .collect();
            let (new_frontier, nodes) = advance(log_id, size, &frontier, &leaves)?;

            for chunk in members.chunks(CHUNK).enumerate() {
                let (c, idxs) = chunk;
                let mut qb = QueryBuilder::new(
                    "INSERT INTO audit_entries (log_id, idx, leaf_hash, body, time, principal, action, decision) ",
                );
                qb.push_values(idxs.iter().enumerate(), |mut b, (k, &i)| {
                    let e = &entries[i];
                    let idx = size + (c * CHUNK + k) as i64;
                    indices[i] = idx;
                    b.push_bind(log_id)
                        .push_bind(idx)
                        .push_bind(e.leaf_hash.clone())
                        .push_bind(e.body.clone())
                        .push_bind(e.time)
                        .push_bind(e.principal.clone())
                        .push_bind(e.action.clone())
                        .push_bind(e.decision.clone());
                });
                qb.build().execute(&mut *tx).await.map_err(db_err)?;
            }
            for chunk in nodes.chunks(CHUNK) {
                let mut qb =
                    QueryBuilder::new("INSERT INTO audit_nodes (log_id, level, idx, hash) ");
                qb.push_values(chunk, |mut b, (level, idx, hash)| {
                    b.push_bind(log_id)
                        .push_bind(i64::from(*level))
                        .push_bind(*idx as i64)
                        .push_bind(hash.clone());
                });
                qb.build().execute(&mut *tx).await.map_err(db_err)?;
            }
            sqlx::query("UPDATE audit_heads SET size = $1, frontier = $2 WHERE log_id = $3")
                .bind(size + members.len() as i64)
                .bind(new_frontier)
                .bind(log_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(indices)
    }

    /// Current size and compact range of a log (`None` if it has no entry).
    pub async fn audit_head(&self, log_id: &str) -> ApiResult<Option<(i64, String)>> {
        let row = sqlx::query("SELECT size, frontier FROM audit_heads WHERE log_id = $1")
            .bind(log_id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        row.map(|r| Ok((r.try_get("size")?, r.try_get("frontier")?)))
            .transpose()
            .map_err(db_err)
    }

    /// Logs whose newest entries are not yet covered by a checkpoint.
    pub async fn audit_heads_unsigned(&self) -> ApiResult<Vec<(String, i64, String)>> {
        let rows = sqlx::query(
            "SELECT h.log_id, h.size, h.frontier FROM audit_heads h WHERE h.size > \
             COALESCE((SELECT MAX(c.size) FROM audit_checkpoints c WHERE c.log_id = h.log_id), 0)",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("log_id")?,
                    r.try_get("size")?,
                    r.try_get("frontier")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)
    }

    /// Hashes of perfect subtrees `(level, index)`; level 0 are leaves.
    pub async fn audit_nodes(
        &self,
        log_id: &str,
        coords: &[(u32, u64)],
    ) -> ApiResult<HashMap<(u32, u64), String>> {
        let mut out = HashMap::new();
        let mut levels: Vec<u32> = coords.iter().map(|c| c.0).collect();
        levels.sort_unstable();
        levels.dedup();
        for level in levels {
            let idxs: Vec<i64> = coords
                .iter()
                .filter(|c| c.0 == level)
                .map(|c| c.1 as i64)
                .collect();
            for chunk in idxs.chunks(CHUNK) {
                let mut qb = if level == 0 {
                    let mut qb = QueryBuilder::new(
                        "SELECT idx, leaf_hash AS hash FROM audit_entries WHERE log_id = ",
                    );
                    qb.push_bind(log_id);
                    qb
                } else {
                    let mut qb =
                        QueryBuilder::new("SELECT idx, hash FROM audit_nodes WHERE log_id = ");
                    qb.push_bind(log_id)
                        .push(" AND level = ")
                        .push_bind(i64::from(level));
                    qb
                };
                qb.push(" AND idx IN (");
                let mut sep = qb.separated(", ");
                for i in chunk {
                    sep.push_bind(*i);
                }
                qb.push(")");
                let rows = qb.build().fetch_all(&self.read).await.map_err(db_err)?;
                for r in rows {
                    let idx: i64 = r.try_get("idx").map_err(db_err)?;
                    let hash: String = r.try_get("hash").map_err(db_err)?;
                    out.insert((level, idx as u64), hash);
                }
            }
        }
        Ok(out)
    }

    /// Entries in index order, filtered; `limit + 1` rows so the caller can
    /// tell whether more follow.
    pub async fn audit_list(
        &self,
        log_id: &str,
        f: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> ApiResult<Vec<AuditRow>> {
        let mut qb =
            QueryBuilder::new("SELECT idx, leaf_hash, body FROM audit_entries WHERE log_id = ");
        qb.push_bind(log_id);
        if let Some(a) = after {
            qb.push(" AND idx > ").push_bind(a);
        }
        if let Some(v) = f.from_index {
            qb.push(" AND idx >= ").push_bind(v);
        }
        if let Some(v) = f.since {
            qb.push(" AND time >= ").push_bind(v);
        }
        if let Some(v) = f.until {
            qb.push(" AND time < ").push_bind(v);
        }
        if let Some(v) = &f.principal {
            qb.push(" AND principal = ").push_bind(v.clone());
        }
        if let Some(v) = &f.action {
            qb.push(" AND action = ").push_bind(v.clone());
        }
        if let Some(v) = &f.decision {
            qb.push(" AND decision = ").push_bind(v.clone());
        }
        qb.push(" ORDER BY idx LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = qb.build().fetch_all(&self.read).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    index: r.try_get("idx")?,
                    leaf_hash: r.try_get("leaf_hash")?,
                    body: r.try_get("body")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)
    }

    pub async fn audit_checkpoint_put(&self, c: &StoredCheckpoint) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (log_id, size, root, note, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (log_id, size) DO NOTHING",
        )
        .bind(&c.log_id)
        .bind(c.size)
        .bind(&c.root)
        .bind(&c.note)
        .bind(c.created_at)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn audit_checkpoint_latest(
        &self,
        log_id: &str,
    ) -> ApiResult<Option<StoredCheckpoint>> {
        let row = sqlx::query(
            "SELECT log_id, size, root, note, created_at FROM audit_checkpoints WHERE log_id = $1 \
             ORDER BY size DESC LIMIT 1",
        )
        .bind(log_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_checkpoint(&r))
            .transpose()
            .map_err(db_err)
    }

    pub async fn audit_checkpoint_get(
        &self,
        log_id: &str,
        size: i64,
    ) -> ApiResult<Option<StoredCheckpoint>> {
        let row = sqlx::query(
            "SELECT log_id, size, root, note, created_at FROM audit_checkpoints WHERE log_id = $1 AND size = $2",
        )
        .bind(log_id)
        .bind(size)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_checkpoint(&r))
            .transpose()
            .map_err(db_err)
    }

    /// Drops entry bodies older than `before`; their leaf hashes stay, so
    /// the tree and every checkpoint still verify.
    pub async fn audit_prune(&self, before: i64) -> ApiResult<u64> {
        let done = sqlx::query(
            "UPDATE audit_entries SET body = NULL WHERE time < $1 AND body IS NOT NULL",
        )
        .bind(before)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}
