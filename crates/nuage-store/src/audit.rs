//! Storage of the per-organization Merkle audit logs. The tree arithmetic
//! lives in `nuage-audit`; this module keeps the rows and serialises appends:
//! the log head row is locked (a no-op `UPDATE … RETURNING`) inside the
//! append transaction, so several servers sharing one PostgreSQL still give
//! every entry a unique, gap-free index.

use std::collections::HashMap;

use nuage_core::ApiResult;
use sqlx::any::AnyArguments;
use sqlx::any::AnyRow;
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::{db_err, json_text, Backend, Store};

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

/// `advance(log_id, size, frontier, new_leaf_hashes)`: the tree code that
/// grows a log's compact range.
pub type AdvanceFn<'a> = dyn FnMut(&str, i64, &str, &[&str]) -> ApiResult<Advance> + Send + 'a;

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
        advance: &mut AdvanceFn<'_>,
    ) -> ApiResult<Vec<i64>> {
        let mut by_log: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match by_log.iter_mut().find(|(l, _)| *l == e.log_id) {
                Some((_, v)) => v.push(i),
                None => by_log.push((&e.log_id, vec![i])),
            }
        }
        if self.backend == Backend::Sqlite {
            match self.audit_append_known(entries, &by_log, advance).await {
                Ok(Some(indices)) => return Ok(indices),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e.detail, "audit append from known heads failed; reading the heads again");
                }
            }
        }
        let mut indices = vec![0i64; entries.len()];
        let mut heads = Vec::with_capacity(by_log.len());
        let mut tx = self.write.begin().await.map_err(db_err)?;
        for (log_id, members) in &by_log {
            let lock =
                "UPDATE audit_heads SET size = size WHERE log_id = $1 RETURNING size, frontier";
            let mut head = sqlx::query(lock)
                .bind(*log_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            if head.is_none() {
                sqlx::query(
                    "INSERT INTO audit_heads (log_id, size, frontier) VALUES ($1, 0, $2) \
                     ON CONFLICT (log_id) DO NOTHING",
                )
                .bind(*log_id)
                .bind(empty_frontier)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                head = sqlx::query(lock)
                    .bind(*log_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            let Some(head) = head else {
                return Err(nuage_core::ApiError::internal("audit log head missing"));
            };
            let size: i64 = head.try_get("size").map_err(db_err)?;
            let frontier: String = head.try_get("frontier").map_err(db_err)?;
            let rows = log_rows(
                entries,
                members,
                log_id,
                size,
                &frontier,
                advance,
                &mut indices,
            )?;
            sqlx::query(self.audit_insert_sql(InsertInto::Entries))
                .bind(*log_id)
                .bind(entries_json(entries, members, size)?)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let nodes: Vec<_> = rows
                .nodes
                .iter()
                .map(|(level, idx, hash)| serde_json::json!([level, idx, hash]))
                .collect();
            sqlx::query(self.audit_insert_sql(InsertInto::Nodes))
                .bind(*log_id)
                .bind(json_text(&nodes)?)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query("UPDATE audit_heads SET size = $1, frontier = $2 WHERE log_id = $3")
                .bind(rows.size)
                .bind(&rows.frontier)
                .bind(*log_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            heads.push((log_id.to_string(), (rows.size, rows.frontier)));
        }
        tx.commit().await.map_err(db_err)?;
        if self.backend == Backend::Sqlite {
            if let Ok(mut known) = self.audit_heads.lock() {
                known.extend(heads);
            }
        }
        Ok(indices)
    }

    /// SQLite only, where this process is the file's only writer: appends
    /// to logs whose head it committed last, in one multi-statement
    /// transaction, so one round trip to the write connection's thread.
    /// Entries are bound as plain parameters, [`ROWS_PER_INSERT`] to a
    /// statement, because parsing them out of JSON cost more than the
    /// inserts. `None` when a log's head is not known yet or the batch is
    /// too large for one statement's parameters. If another writer did
    /// touch a log, the entries' primary key refuses the indices and the
    /// caller falls back to reading the heads.
    async fn audit_append_known(
        &self,
        entries: &[AuditAppend],
        by_log: &[(&str, Vec<usize>)],
        advance: &mut AdvanceFn<'_>,
    ) -> ApiResult<Option<Vec<i64>>> {
        let inserts = entries.len().div_ceil(ROWS_PER_INSERT);
        if inserts * ROWS_PER_INSERT * 8 + 1 + by_log.len() * 4 > MAX_SQLITE_PARAMS {
            return Ok(None);
        }
        let known: Vec<(i64, String)> = {
            let Ok(heads) = self.audit_heads.lock() else {
                return Ok(None);
            };
            let mut known = Vec::with_capacity(by_log.len());
            for (log_id, _) in by_log {
                match heads.get(*log_id) {
                    Some(h) => known.push(h.clone()),
                    None => return Ok(None),
                }
            }
            known
        };
        let mut indices = vec![0i64; entries.len()];
        let mut all = Vec::with_capacity(by_log.len());
        let mut nodes = Vec::new();
        for ((log_id, members), (size, frontier)) in by_log.iter().zip(&known) {
            let rows = log_rows(
                entries,
                members,
                log_id,
                *size,
                frontier,
                advance,
                &mut indices,
            )?;
            for (level, idx, hash) in &rows.nodes {
                nodes.push(serde_json::json!([log_id, level, idx, hash]));
            }
            all.push((log_id, *size, rows));
        }
        let nodes = json_text(&nodes)?;
        let sql = append_known_sql(inserts, by_log.len());
        let mut q = sqlx::query(&sql);
        for (i, e) in entries.iter().enumerate() {
            q = q
                .bind(e.log_id.as_str())
                .bind(indices[i])
                .bind(e.leaf_hash.as_str())
                .bind(e.body.as_str())
                .bind(e.time)
                .bind(e.principal.as_str())
                .bind(e.action.as_str())
                .bind(e.decision.as_str());
        }
        for _ in entries.len()..inserts * ROWS_PER_INSERT {
            for _ in 0..8 {
                q = q.bind(None::<i64>);
            }
        }
        q = q.bind(nodes.as_str());
        for (log_id, old_size, rows) in &all {
            q = q
                .bind(rows.size)
                .bind(rows.frontier.as_str())
                .bind(**log_id)
                .bind(*old_size);
        }
        let mut conn = self.write.acquire().await.map_err(db_err)?;
        if let Err(e) = q.execute(&mut *conn).await {
            // The failed statement left the transaction open: close this
            // connection (rolling it back) rather than return it to the pool.
            let _ = conn.detach();
            if let Ok(mut heads) = self.audit_heads.lock() {
                heads.clear();
            }
            return Err(db_err(e));
        }
        drop(conn);
        if let Ok(mut heads) = self.audit_heads.lock() {
            for (log_id, _, rows) in all {
                heads.insert(log_id.to_string(), (rows.size, rows.frontier));
            }
        }
        Ok(Some(indices))
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
                let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
                let sql = if level == 0 {
                    format!(
                        "SELECT idx, leaf_hash AS hash FROM audit_entries \
                         WHERE log_id = $1 AND $2 = 0 AND idx IN ({})",
                        list.join(", ")
                    )
                } else {
                    format!(
                        "SELECT idx, hash FROM audit_nodes WHERE log_id = $1 AND level = $2 AND idx IN ({})",
                        list.join(", ")
                    )
                };
                let mut q = sqlx::query(&sql).bind(log_id).bind(i64::from(level));
                for i in chunk {
                    q = q.bind(*i);
                }
                let rows = q.fetch_all(&self.read).await.map_err(db_err)?;
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
        let mut sql =
            String::from("SELECT idx, leaf_hash, body FROM audit_entries WHERE log_id = $1");
        let mut args: Vec<Arg> = vec![Arg::Text(log_id.to_string())];
        let mut cond = |clause: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {clause} ${}", args.len()));
        };
        if let Some(a) = after {
            cond("idx >", Arg::Int(a));
        }
        if let Some(v) = f.from_index {
            cond("idx >=", Arg::Int(v));
        }
        if let Some(v) = f.since {
            cond("time >=", Arg::Int(v));
        }
        if let Some(v) = f.until {
            cond("time <", Arg::Int(v));
        }
        if let Some(v) = &f.principal {
            cond("principal =", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.action {
            cond("action =", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.decision {
            cond("decision =", Arg::Text(v.clone()));
        }
        args.push(Arg::Int(i64::from(limit) + 1));
        sql.push_str(&format!(" ORDER BY idx LIMIT ${}", args.len()));
        let rows = bind_all(sqlx::query(&sql), &args)
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?;
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

/// A log's new interior nodes `(level, index, hex hash)` and its new head.
struct LogRows {
    nodes: Vec<(u32, u64, String)>,
    size: i64,
    frontier: String,
}

/// Grows a log by its `members` and records each one's index.
fn log_rows(
    entries: &[AuditAppend],
    members: &[usize],
    log_id: &str,
    size: i64,
    frontier: &str,
    advance: &mut AdvanceFn<'_>,
    indices: &mut [i64],
) -> ApiResult<LogRows> {
    let leaves: Vec<&str> = members
        .iter()
        .map(|&i| entries[i].leaf_hash.as_str())
        .collect();
    let (new_frontier, nodes) = advance(log_id, size, frontier, &leaves)?;
    for (offset, &i) in members.iter().enumerate() {
        indices[i] = size + offset as i64;
    }
    Ok(LogRows {
        nodes,
        size: size + members.len() as i64,
        frontier: new_frontier,
    })
}

/// A log's new entries as the JSON array [`Store::audit_insert_sql`] takes.
fn entries_json(entries: &[AuditAppend], members: &[usize], size: i64) -> ApiResult<String> {
    let rows: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(offset, &i)| {
            let e = &entries[i];
            serde_json::json!([
                size + offset as i64,
                e.leaf_hash,
                e.body,
                e.time,
                e.principal,
                e.action,
                e.decision
            ])
        })
        .collect();
    json_text(&rows)
}

/// Entries per `INSERT` of the SQLite append; a batch's last statement is
/// padded with rows of NULLs, which it skips, so the statement text depends
/// only on the number of statements and stays in the prepared-statement
/// cache.
const ROWS_PER_INSERT: usize = 16;

/// SQLite's default limit on a statement's parameters.
const MAX_SQLITE_PARAMS: usize = 32_766;

/// SQLite: the transaction of [`Store::audit_append_known`]: `inserts`
/// statements of [`ROWS_PER_INSERT`] entries (eight parameters each: log
/// id and the seven columns), one insert of every log's new nodes from a
/// JSON array, then four parameters per log (new size, new frontier, id,
/// old size) for its head.
fn append_known_sql(inserts: usize, logs: usize) -> std::sync::Arc<str> {
    use std::sync::{Arc, Mutex, OnceLock};
    /// Statement texts by `(inserts, logs)`.
    type Built = Mutex<HashMap<(usize, usize), Arc<str>>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let build = || {
        let mut n = 0usize;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        let mut sql = String::from("BEGIN IMMEDIATE;");
        for _ in 0..inserts {
            let rows: Vec<String> = (0..ROWS_PER_INSERT)
                .map(|_| {
                    let params: Vec<String> = (0..8).map(|_| next()).collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            sql.push_str(&format!(
                " INSERT INTO audit_entries (log_id, idx, leaf_hash, body, time, principal, action, decision) \
                 SELECT column1, column2, column3, column4, column5, column6, column7, column8 \
                 FROM (VALUES {}) WHERE column2 IS NOT NULL;",
                rows.join(", ")
            ));
        }
        let nodes = next();
        sql.push_str(&format!(
            " INSERT INTO audit_nodes (log_id, level, idx, hash) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each({nodes});"
        ));
        for _ in 0..logs {
            let (size, frontier, id, old) = (next(), next(), next(), next());
            sql.push_str(&format!(
                " UPDATE audit_heads SET size = {size}, frontier = {frontier} \
                 WHERE log_id = {id} AND size = {old};"
            ));
        }
        sql.push_str(" COMMIT;");
        Arc::<str>::from(sql)
    };
    // Batches of up to 256 entries over up to 8 logs cover nearly every
    // batch; rarer shapes are built each time rather than kept forever.
    if inserts > 16 || logs > 8 {
        return build();
    }
    let Ok(mut built) = BUILT.get_or_init(Default::default).lock() else {
        return build();
    };
    built.entry((inserts, logs)).or_insert_with(build).clone()
}

#[derive(Clone, Copy)]
enum InsertInto {
    Entries,
    Nodes,
}

impl Store {
    /// The `INSERT` of a log's new rows (`$1` the log id, `$2` a JSON array
    /// of rows, each an array of the remaining columns in order).
    fn audit_insert_sql(&self, table: InsertInto) -> &'static str {
        match (self.backend, table) {
            (Backend::Sqlite, InsertInto::Entries) => {
                "INSERT INTO audit_entries (log_id, idx, leaf_hash, body, time, principal, action, decision) \
                 SELECT $1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                 json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'), \
                 json_extract(value, '$[5]'), json_extract(value, '$[6]') FROM json_each($2)"
            }
            (Backend::Sqlite, InsertInto::Nodes) => {
                "INSERT INTO audit_nodes (log_id, level, idx, hash) \
                 SELECT $1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                 json_extract(value, '$[2]') FROM json_each($2)"
            }
            (Backend::Postgres, InsertInto::Entries) => {
                "INSERT INTO audit_entries (log_id, idx, leaf_hash, body, time, principal, action, decision) \
                 SELECT $1, (value->>0)::BIGINT, value->>1, value->>2, (value->>3)::BIGINT, \
                 value->>4, value->>5, value->>6 FROM json_array_elements($2::JSON)"
            }
            (Backend::Postgres, InsertInto::Nodes) => {
                "INSERT INTO audit_nodes (log_id, level, idx, hash) \
                 SELECT $1, (value->>0)::BIGINT, (value->>1)::BIGINT, value->>2 \
                 FROM json_array_elements($2::JSON)"
            }
        }
    }
}

/// A bind value of a query whose shape is decided at run time.
enum Arg {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    args: &'q [Arg],
) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(i) => q.bind(*i),
        };
    }
    q
}
