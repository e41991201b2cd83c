//! Rows of `node_tasks`: what an API request asks a node's agent to do to
//! a running VM, and what became of it. A task is claimed once
//! (`pending` → `running`), finished once (`done` or `failed`), or
//! cancelled while still pending; each step is one conditional UPDATE, so
//! an agent and a request that gave up never both win.

use nuage_core::ApiResult;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, insert_err, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTaskRow {
    pub id: String,
    pub node_id: String,
    pub instance_id: String,
    /// JSON of the task.
    pub task: String,
    /// `pending`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    pub message: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, node_id, instance_id, task, state, message, created_at, updated_at";

fn row_to_task(r: &AnyRow) -> Result<NodeTaskRow, sqlx::Error> {
    Ok(NodeTaskRow {
        id: r.try_get("id")?,
        node_id: r.try_get("node_id")?,
        instance_id: r.try_get("instance_id")?,
        task: r.try_get("task")?,
        state: r.try_get("state")?,
        message: r.try_get("message")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    pub async fn node_task_create(&self, t: &NodeTaskRow) -> ApiResult<()> {
        sqlx::query(&format!(
            "INSERT INTO node_tasks ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&t.id)
        .bind(&t.node_id)
        .bind(&t.instance_id)
        .bind(&t.task)
        .bind(&t.state)
        .bind(&t.message)
        .bind(t.created_at)
        .bind(t.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("node task", &t.id))?;
        Ok(())
    }

    pub async fn node_task_get(&self, id: &str) -> ApiResult<Option<NodeTaskRow>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM node_tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.write)
            .await
            .map_err(db_err)?;
        row.map(|r| row_to_task(&r)).transpose().map_err(db_err)
    }

    /// The tasks of node `node_id` nobody has claimed yet, oldest first.
    pub async fn node_tasks_pending(&self, node_id: &str) -> ApiResult<Vec<NodeTaskRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM node_tasks WHERE node_id = $1 AND state = 'pending' \
             ORDER BY created_at, id"
        ))
        .bind(node_id)
        .fetch_all(&self.write)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_task)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Moves task `id` of node `node_id` from state `from` to `to` with
    /// `message`; false when it is not (or no longer) in `from`.
    pub async fn node_task_step(
        &self,
        id: &str,
        node_id: &str,
        from: &str,
        to: &str,
        message: &str,
    ) -> ApiResult<bool> {
        let r = sqlx::query(
            "UPDATE node_tasks SET state = $1, message = $2, updated_at = $3 \
             WHERE id = $4 AND node_id = $5 AND state = $6",
        )
        .bind(to)
        .bind(message)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .bind(node_id)
        .bind(from)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    /// Removes the tasks last changed before `before_ms` (their requests
    /// stopped waiting long ago); how many.
    pub async fn node_tasks_sweep(&self, before_ms: i64) -> ApiResult<u64> {
        let r = sqlx::query("DELETE FROM node_tasks WHERE updated_at < $1")
            .bind(before_ms)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected())
    }

    pub async fn node_task_delete(&self, id: &str) -> ApiResult<()> {
        sqlx::query("DELETE FROM node_tasks WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
