//! Tasks: what a tenant's request needs done to a running VM by the agent
//! of the node it runs on, when that node is not this server's own (a
//! reset, a live snapshot, a live resize: QMP is local to a node).
//!
//! The request writes the task and waits for its outcome; the agent sees
//! it with its work, claims it, does it and records what happened. A task
//! no agent claimed in time is cancelled by the request, which then says
//! nothing changed; a claimed one runs to its end.

use std::time::{Duration, Instant};

use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_store::{InstanceRow, NodeTaskRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::service::Compute;

/// What an agent is asked to do to a running VM of its node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeTask {
    /// Reset the guest (like a reset button).
    Reboot,
    /// Switch disk `disk` to the volume's new top file (an encrypted
    /// overlay the agent creates; the volume's keys name it first).
    Snapshot { volume_id: String, disk: String },
    /// Grow disk `disk` to `size_bytes`.
    Resize { disk: String, size_bytes: u64 },
    /// Dial back to console relay `session` and bridge it to the VM's
    /// serial console.
    Console { session: String },
}

/// A task waiting for the agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskWork {
    pub id: String,
    pub task: NodeTask,
}

/// How long a task waits for its agent to claim it.
pub const CLAIM_WITHIN: Duration = Duration::from_secs(30);
/// How long a claimed task may take before the request stops waiting.
const DONE_WITHIN: Duration = Duration::from_secs(120);
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Tasks untouched for this long are swept: no request waits for them.
const SWEEP_AFTER: Duration = Duration::from_secs(600);

/// Removes, every minute until `stop`, the tasks whose requests died while
/// waiting (a server killed mid-request leaves its task behind).
pub(crate) async fn sweep(compute: Compute, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let before = now_ms() - i64::try_from(SWEEP_AFTER.as_millis()).unwrap_or(i64::MAX);
        match compute.0.store.node_tasks_sweep(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "abandoned node tasks removed"),
            Err(e) => tracing::warn!(error = %e.detail, "sweeping node tasks failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

impl Compute {
    /// Has the agent of instance `i`'s node do `task`; `what` says what it
    /// is for, in errors. 503 `node_unresponsive` (nothing changed) when
    /// the agent does not claim it in time, 409 `node_task_failed` with the
    /// agent's reason when it could not.
    pub(crate) async fn run_on_node(
        &self,
        i: &InstanceRow,
        task: &NodeTask,
        what: &str,
    ) -> ApiResult<()> {
        let (id, node_id) = self.post_task(i, task).await?;
        let store = &self.0.store;
        let start = Instant::now();
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            let t = store
                .node_task_get(&id)
                .await?
                .ok_or_else(|| ApiError::internal("the node task vanished"))?;
            match t.state.as_str() {
                "done" => {
                    store.node_task_delete(&id).await?;
                    return Ok(());
                }
                "failed" => {
                    store.node_task_delete(&id).await?;
                    return Err(ApiError::conflict(
                        "node_task_failed",
                        format!("instance {}: could not {what}: {}", i.name, t.message),
                    ));
                }
                "pending"
                    if start.elapsed() > CLAIM_WITHIN && self.drop_task(&id, &node_id).await? =>
                {
                    return Err(node_unresponsive(i, what));
                }
                "running" if start.elapsed() > CLAIM_WITHIN + DONE_WITHIN => {
                    return Err(ApiError::unavailable(format!(
                        "the node running instance {} took the request to {what} but has not \
                         finished it; look at the instance again later",
                        i.name
                    ))
                    .with_code("node_task_timeout"));
                }
                _ => {}
            }
        }
    }

    /// Asks the agent of instance `i`'s node to do `task`, without waiting:
    /// the task's id and node.
    pub async fn post_task(&self, i: &InstanceRow, task: &NodeTask) -> ApiResult<(String, String)> {
        let node_id = i
            .node_id
            .clone()
            .ok_or_else(|| ApiError::internal("the instance is on no node"))?;
        let now = now_ms();
        let row = NodeTaskRow {
            id: format!("task_{}", uuid::Uuid::new_v4().simple()),
            node_id: node_id.clone(),
            instance_id: i.id.clone(),
            task: serde_json::to_string(task)
                .map_err(|e| ApiError::internal(format!("task does not encode: {e}")))?,
            state: "pending".into(),
            message: String::new(),
            created_at: now,
            updated_at: now,
        };
        self.0.store.node_task_create(&row).await?;
        self.wake_agent();
        Ok((row.id, node_id))
    }

    /// Withdraws task `id` if no agent claimed it yet (true), or leaves it
    /// to the agent that did (false).
    pub async fn drop_task(&self, id: &str, node_id: &str) -> ApiResult<bool> {
        let store = &self.0.store;
        let dropped = store
            .node_task_step(id, node_id, "pending", "cancelled", "")
            .await?;
        if dropped {
            store.node_task_delete(id).await?;
        }
        Ok(dropped)
    }

    /// The pending tasks of `node_id`, by instance.
    pub(crate) async fn pending_tasks(&self, node_id: &str) -> ApiResult<Vec<(String, TaskWork)>> {
        let mut out = Vec::new();
        for t in self.0.store.node_tasks_pending(node_id).await? {
            match serde_json::from_str::<NodeTask>(&t.task) {
                Ok(task) => out.push((t.instance_id, TaskWork { id: t.id, task })),
                Err(e) => tracing::warn!(task = %t.id, error = %e, "unreadable node task"),
            }
        }
        Ok(out)
    }

    /// Node `node_id`'s agent claims (`running`) or finishes (`done`,
    /// `failed`) task `id`; false when the task is not (or no longer) in
    /// the state before that step — cancelled, or another pass took it.
    pub async fn take_task_step(
        &self,
        node_id: &str,
        id: &str,
        state: &str,
        message: &str,
    ) -> ApiResult<bool> {
        let from = match state {
            "running" => "pending",
            "done" | "failed" => "running",
            other => {
                return Err(ApiError::bad_request(
                    "invalid_task_state",
                    format!("a task goes to running, done or failed, not {other:?}"),
                ))
            }
        };
        let message: String = message.chars().take(4096).collect();
        self.0
            .store
            .node_task_step(id, node_id, from, state, &message)
            .await
    }
}

/// 503 `node_unresponsive`: the agent of `i`'s node did not take the
/// request in time; nothing changed.
pub fn node_unresponsive(i: &InstanceRow, what: &str) -> ApiError {
    ApiError::unavailable(format!(
        "the node running instance {} did not take the request to {what} within {} s; \
         nothing changed",
        i.name,
        CLAIM_WITHIN.as_secs()
    ))
    .with_code("node_unresponsive")
}
