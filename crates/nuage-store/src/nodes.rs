//! Rows of the machines that run virtual machines (`compute_nodes`) and of
//! the sizes operators offer tenants (`instance_types`). A node row is
//! written by the node itself (capacity, accelerator, heartbeat) and by
//! operators (overcommit ratios); placement reads both together with what
//! the instances on each node already use.

use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, insert_err, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    /// `kvm` or `tcg`, and why the probe decided so.
    pub accel: String,
    pub accel_reason: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_bytes: i64,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// `ready` (takes new instances) or anything else (does not).
    pub state: String,
    /// Milliseconds since the epoch of the node's last sign of life.
    pub heartbeat_at: i64,
    pub created_at: i64,
    /// Whether placement may put new instances on the node: an operator
    /// decides (`nuage admin node schedule`); an enrolled node starts
    /// without.
    pub schedulable: bool,
    /// Under the two-person rule, the operator who asked to make the node
    /// schedulable and waits for a second one ('' when none).
    pub schedule_requested_by: String,
    /// What the operator approved for the node (0: no bound): placement
    /// never counts more than this, whatever the node reports.
    pub max_vcpus: i64,
    pub max_memory_mib: i64,
    /// Labels an operator put on the node (organizations may require one
    /// they accept).
    pub labels: Vec<String>,
}

/// What the instances placed on a node use (every state but `deleted`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub vcpus: i64,
    pub memory_mib: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeRow {
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub description: String,
    pub created_at: i64,
}

const NODE_COLS: &str = "id, name, accel, accel_reason, vcpus, memory_mib, disk_bytes, \
     cpu_overcommit, memory_overcommit, state, heartbeat_at, created_at, schedulable, \
     schedule_requested_by, max_vcpus, max_memory_mib, labels";

/// `$1, …, $17`: one parameter per column of [`NODE_COLS`].
const NODE_PARAMS: &str =
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17";

const TYPE_COLS: &str = "name, vcpus, memory_mib, description, created_at";

fn row_to_node(r: &AnyRow) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        accel: r.try_get("accel")?,
        accel_reason: r.try_get("accel_reason")?,
        vcpus: r.try_get("vcpus")?,
        memory_mib: r.try_get("memory_mib")?,
        disk_bytes: r.try_get("disk_bytes")?,
        cpu_overcommit: r.try_get("cpu_overcommit")?,
        memory_overcommit: r.try_get("memory_overcommit")?,
        state: r.try_get("state")?,
        heartbeat_at: r.try_get("heartbeat_at")?,
        created_at: r.try_get("created_at")?,
        schedulable: r.try_get::<i64, _>("schedulable")? != 0,
        schedule_requested_by: r.try_get("schedule_requested_by")?,
        max_vcpus: r.try_get("max_vcpus")?,
        max_memory_mib: r.try_get("max_memory_mib")?,
        labels: serde_json::from_str(&r.try_get::<String, _>("labels")?).unwrap_or_default(),
    })
}

/// Binds a node's columns, in the order of [`NODE_COLS`], as `$1`..`$17`.
fn bind_node<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    n: &'q NodeRow,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let labels = serde_json::to_string(&n.labels).unwrap_or_else(|_| "[]".into());
    q.bind(&n.id)
        .bind(&n.name)
        .bind(&n.accel)
        .bind(&n.accel_reason)
        .bind(n.vcpus)
        .bind(n.memory_mib)
        .bind(n.disk_bytes)
        .bind(n.cpu_overcommit)
        .bind(n.memory_overcommit)
        .bind(&n.state)
        .bind(n.heartbeat_at)
        .bind(n.created_at)
        .bind(i64::from(n.schedulable))
        .bind(&n.schedule_requested_by)
        .bind(n.max_vcpus)
        .bind(n.max_memory_mib)
        .bind(labels)
}

fn row_to_type(r: &AnyRow) -> Result<InstanceTypeRow, sqlx::Error> {
    Ok(InstanceTypeRow {
        name: r.try_get("name")?,
        vcpus: r.try_get("vcpus")?,
        memory_mib: r.try_get("memory_mib")?,
        description: r.try_get("description")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    // ---- compute nodes ----------------------------------------------------------

    /// Records a node starting: inserts it, or refreshes an existing row of
    /// that name (capacity, accelerator, state, heartbeat) while keeping its
    /// id, creation time and the overcommit ratios an operator set.
    pub async fn node_upsert(&self, n: &NodeRow) -> ApiResult<NodeRow> {
        bind_node(
            sqlx::query(&format!(
                "INSERT INTO compute_nodes ({NODE_COLS}) \
             VALUES ({NODE_PARAMS}) \
             ON CONFLICT (name) DO UPDATE SET accel = excluded.accel, \
             accel_reason = excluded.accel_reason, vcpus = excluded.vcpus, \
             memory_mib = excluded.memory_mib, disk_bytes = excluded.disk_bytes, \
             state = excluded.state, heartbeat_at = excluded.heartbeat_at \
             WHERE compute_nodes.token_hash IS NULL"
            )),
            n,
        )
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        let row = sqlx::query(&format!(
            "SELECT {NODE_COLS}, CASE WHEN token_hash IS NULL THEN 0 ELSE 1 END AS enrolled \
             FROM compute_nodes WHERE name = $1"
        ))
        .bind(&n.name)
        .fetch_one(&self.write)
        .await
        .map_err(db_err)?;
        if row.try_get::<i64, _>("enrolled").map_err(db_err)? != 0 {
            return Err(ApiError::conflict(
                "node_enrolled",
                format!(
                    "node name {:?} belongs to a node enrolled for `nuage agent`; \
                 give this server another --node-name",
                    n.name
                ),
            ));
        }
        row_to_node(&row).map_err(db_err)
    }

    /// Records a node an operator enrolled for `nuage agent`: capacity
    /// unknown and no heartbeat until its agent reports; `token_hash` is
    /// the SHA-256 of its credential.
    pub async fn node_enroll(&self, n: &NodeRow, token_hash: &str) -> ApiResult<NodeRow> {
        bind_node(
            sqlx::query(&format!(
                "INSERT INTO compute_nodes ({NODE_COLS}, token_hash) \
                 VALUES ({NODE_PARAMS}, $18)"
            )),
            n,
        )
        .bind(token_hash)
        .execute(&self.write)
        .await
        .map_err(insert_err("compute node", &n.name))?;
        Ok(n.clone())
    }

    /// Replaces an enrolled node's credential; false for a node that has
    /// none (the server's embedded node) or no longer exists. The agent
    /// with the new credential proves its mount again before the node takes
    /// instances (it is `enrolled` until then).
    pub async fn node_set_token(&self, id: &str, token_hash: &str) -> ApiResult<bool> {
        let done = sqlx::query(
            "UPDATE compute_nodes SET token_hash = $1, state = 'enrolled', challenge_hash = NULL \
             WHERE id = $2 AND token_hash IS NOT NULL",
        )
        .bind(token_hash)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether node `id` was enrolled for `nuage agent` (it has a credential).
    pub async fn node_is_enrolled(&self, id: &str) -> ApiResult<bool> {
        let e: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN token_hash IS NULL THEN 0 ELSE 1 END FROM compute_nodes WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        Ok(e == Some(1))
    }

    /// Removes a node that holds no instance (deleted ones included: their
    /// rows go with their agent's last pass); false when it holds one.
    pub async fn node_delete_idle(&self, id: &str) -> ApiResult<bool> {
        let done = sqlx::query(
            "DELETE FROM compute_nodes WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM instances WHERE node_id = $2)",
        )
        .bind(id)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// The enrolled node whose credential hashes to `token_hash`.
    pub async fn node_by_token(&self, token_hash: &str) -> ApiResult<Option<NodeRow>> {
        sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM compute_nodes WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .map(|r| row_to_node(&r))
        .transpose()
        .map_err(db_err)
    }

    /// What an enrolled node's agent measured, with a fresh heartbeat.
    pub async fn node_report(&self, n: &NodeRow) -> ApiResult<()> {
        let done = sqlx::query(
            "UPDATE compute_nodes SET accel = $1, accel_reason = $2, vcpus = $3, \
             memory_mib = $4, disk_bytes = $5, state = $6, heartbeat_at = $7 \
             WHERE id = $8 AND token_hash IS NOT NULL",
        )
        .bind(&n.accel)
        .bind(&n.accel_reason)
        .bind(n.vcpus)
        .bind(n.memory_mib)
        .bind(n.disk_bytes)
        .bind(&n.state)
        .bind(n.heartbeat_at)
        .bind(&n.id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("compute node", &n.id));
        }
        Ok(())
    }

    /// Records the challenge just written for enrolled node `id` (the
    /// SHA-256 of its nonce, issued at `at`), replacing any earlier one;
    /// false for a node without a credential.
    pub async fn node_set_challenge(&self, id: &str, hash: &str, at: i64) -> ApiResult<bool> {
        let done = sqlx::query(
            "UPDATE compute_nodes SET challenge_hash = $1, challenge_at = $2 \
             WHERE id = $3 AND token_hash IS NOT NULL",
        )
        .bind(hash)
        .bind(at)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// Consumes the challenge of enrolled node `id` if its nonce hashes to
    /// `hash` and it was issued at `not_before` or later: true once, for
    /// the right answer only.
    pub async fn node_take_challenge(
        &self,
        id: &str,
        hash: &str,
        not_before: i64,
    ) -> ApiResult<bool> {
        let done = sqlx::query(
            "UPDATE compute_nodes SET challenge_hash = NULL \
             WHERE id = $1 AND token_hash IS NOT NULL AND challenge_hash = $2 \
             AND challenge_at >= $3",
        )
        .bind(id)
        .bind(hash)
        .bind(not_before)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets whether placement may use node `id`, who asked (two-person
    /// rule: '' once decided) and the capacity the operator approved;
    /// `None` when the node is gone.
    pub async fn node_set_schedule(
        &self,
        id: &str,
        schedulable: bool,
        requested_by: &str,
        max_vcpus: i64,
        max_memory_mib: i64,
    ) -> ApiResult<Option<NodeRow>> {
        let row = sqlx::query(&format!(
            "UPDATE compute_nodes SET schedulable = $1, schedule_requested_by = $2, \
             max_vcpus = $3, max_memory_mib = $4 WHERE id = $5 RETURNING {NODE_COLS}"
        ))
        .bind(i64::from(schedulable))
        .bind(requested_by)
        .bind(max_vcpus)
        .bind(max_memory_mib)
        .bind(id)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_node(&r)).transpose().map_err(db_err)
    }

    /// Replaces node `id`'s labels; `None` when the node is gone.
    pub async fn node_set_labels(&self, id: &str, labels: &[String]) -> ApiResult<Option<NodeRow>> {
        let json = serde_json::to_string(labels).map_err(|e| ApiError::internal(e.to_string()))?;
        let row = sqlx::query(&format!(
            "UPDATE compute_nodes SET labels = $1 WHERE id = $2 RETURNING {NODE_COLS}"
        ))
        .bind(json)
        .bind(id)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_node(&r)).transpose().map_err(db_err)
    }

    /// The node labels organization `org_id` accepts (`None`: it requires
    /// none, any node will do).
    pub async fn org_node_labels(&self, org_id: &str) -> ApiResult<Option<Vec<String>>> {
        let labels: Option<String> =
            sqlx::query_scalar("SELECT labels FROM org_node_labels WHERE org_id = $1")
                .bind(org_id)
                .fetch_optional(&self.read)
                .await
                .map_err(db_err)?;
        labels
            .map(|l| serde_json::from_str(&l).map_err(|e| ApiError::internal(e.to_string())))
            .transpose()
    }

    /// Sets the node labels organization `org_id` accepts; `None` lifts
    /// the requirement.
    pub async fn org_node_labels_set(
        &self,
        org_id: &str,
        labels: Option<&[String]>,
        now_ms: i64,
    ) -> ApiResult<()> {
        match labels {
            Some(l) => {
                let json =
                    serde_json::to_string(l).map_err(|e| ApiError::internal(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO org_node_labels (org_id, labels, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (org_id) DO UPDATE SET labels = excluded.labels, \
                     updated_at = excluded.updated_at",
                )
                .bind(org_id)
                .bind(json)
                .bind(now_ms)
                .execute(&self.write)
                .await
                .map_err(db_err)?;
            }
            None => {
                sqlx::query("DELETE FROM org_node_labels WHERE org_id = $1")
                    .bind(org_id)
                    .execute(&self.write)
                    .await
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// The node named (or with id) `name`.
    pub async fn node_get(&self, name: &str) -> ApiResult<Option<NodeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM compute_nodes WHERE name = $1 OR id = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_node(&r)).transpose().map_err(db_err)
    }

    /// Every node, by name (a handful per installation: no paging).
    pub async fn node_list(&self) -> ApiResult<Vec<NodeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM compute_nodes ORDER BY name"
        ))
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_node)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// What the instances on each node use, by node id (nodes without
    /// instances are absent).
    pub async fn node_usage(&self) -> ApiResult<Vec<(String, NodeUsage)>> {
        let rows = sqlx::query(
            "SELECT node_id, CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
             CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib \
             FROM instances WHERE node_id IS NOT NULL AND state <> 'deleted' \
             GROUP BY node_id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("node_id")?,
                    NodeUsage {
                        vcpus: r.try_get("vcpus")?,
                        memory_mib: r.try_get("memory_mib")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err)
    }

    /// A sign of life of node `id` at `now_ms`; `not_found` if the row is gone.
    pub async fn node_heartbeat(&self, id: &str, now_ms: i64) -> ApiResult<()> {
        let done = sqlx::query("UPDATE compute_nodes SET heartbeat_at = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("compute node", id));
        }
        Ok(())
    }

    /// Sets the ratios given (the others stay) and returns the node.
    pub async fn node_set_overcommit(
        &self,
        id: &str,
        cpu: Option<f64>,
        memory: Option<f64>,
    ) -> ApiResult<NodeRow> {
        // One statement per set of columns, never a NULL parameter: sqlx
        // caches a statement with the parameter types of its first use, and
        // on PostgreSQL a NULL bound there types the parameter so that a
        // later number no longer fits ("incorrect binary data format").
        let (set, values): (&str, Vec<f64>) = match (cpu, memory) {
            (Some(c), Some(m)) => ("cpu_overcommit = $1, memory_overcommit = $2", vec![c, m]),
            (Some(c), None) => ("cpu_overcommit = $1", vec![c]),
            (None, Some(m)) => ("memory_overcommit = $1", vec![m]),
            (None, None) => ("cpu_overcommit = cpu_overcommit", vec![]),
        };
        let sql = format!(
            "UPDATE compute_nodes SET {set} WHERE id = ${} RETURNING {NODE_COLS}",
            values.len() + 1
        );
        let mut q = sqlx::query(&sql);
        for v in values {
            q = q.bind(v);
        }
        let row = q
            .bind(id)
            .fetch_optional(&self.write)
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => row_to_node(&r).map_err(db_err),
            None => Err(ApiError::not_found("compute node", id)),
        }
    }

    // ---- instance types ---------------------------------------------------------

    /// The instance type `name`.
    pub async fn instance_type_get(&self, name: &str) -> ApiResult<Option<InstanceTypeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TYPE_COLS} FROM instance_types WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_type(&r)).transpose().map_err(db_err)
    }

    /// Instance types by name, after `after`, at most `limit`.
    pub async fn instance_type_list(
        &self,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<InstanceTypeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TYPE_COLS} FROM instance_types WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_type)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Creates or replaces the type (a replaced one keeps its creation
    /// time); true when it was created. Instances made from the old size
    /// keep theirs: they copy it.
    pub async fn instance_type_put(&self, t: &InstanceTypeRow) -> ApiResult<bool> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let existed = sqlx::query("SELECT name FROM instance_types WHERE name = $1")
            .bind(&t.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .is_some();
        sqlx::query(&format!(
            "INSERT INTO instance_types ({TYPE_COLS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET vcpus = excluded.vcpus, \
             memory_mib = excluded.memory_mib, description = excluded.description"
        ))
        .bind(&t.name)
        .bind(t.vcpus)
        .bind(t.memory_mib)
        .bind(&t.description)
        .bind(t.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(!existed)
    }

    /// Deletes the type; false if there was none.
    pub async fn instance_type_delete(&self, name: &str) -> ApiResult<bool> {
        let done = sqlx::query("DELETE FROM instance_types WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    /// Inserts `types` if the table is empty (a fresh installation); an
    /// existing catalogue is left alone. Returns how many were inserted.
    pub async fn instance_type_seed(&self, types: &[InstanceTypeRow]) -> ApiResult<u64> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let n: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM instance_types")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if n > 0 {
            return Ok(0);
        }
        let mut inserted = 0;
        for t in types {
            // Another server sharing the database may be seeding too.
            let done = sqlx::query(&format!(
                "INSERT INTO instance_types ({TYPE_COLS}) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO NOTHING"
            ))
            .bind(&t.name)
            .bind(t.vcpus)
            .bind(t.memory_mib)
            .bind(&t.description)
            .bind(t.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            inserted += done.rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(inserted)
    }
}
