//! What a node's agent asks of the control plane and tells it back.
//!
//! The reconciler ([`crate::agent`]) runs the same way on the node a
//! server embeds and on a host of its own (`nuage agent`); only the
//! [`Link`] differs: the embedded one calls the service here directly, the
//! remote one calls the `/agent/v1` routes, which call the same service
//! with the caller's node. Every call is scoped to that node: an agent sees
//! and changes only the instances placed on it, and the volumes those hold,
//! and receives a disk key or a user-data only for them.
//!
//! Disks are files under the compute directory, named in the store
//! relative to it; a node of its own mounts the same shared directory at
//! its `--compute-dir` (images and new volumes are written by the control
//! plane).

use std::future::Future;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use nuage_core::model::kms::Justification;
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::{KeyUse, Purpose};
use nuage_store::{InstanceRow, VolumeRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::instances::open_user_data;
use crate::service::{Compute, LayerRef};
use crate::tasks::TaskWork;

/// The conversation of one node's agent with the control plane.
pub trait Link: Send + Sync {
    /// The instances placed on the node, with their volumes.
    fn work(&self) -> impl Future<Output = ApiResult<Vec<Work>>> + Send;
    /// What the agent saw or did to an instance.
    fn report(
        &self,
        instance_id: &str,
        r: &InstanceReport,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// A volume's attachment settled: `attached` or `available`.
    fn attachment(
        &self,
        volume_id: &str,
        state: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Claims (`running`) or finishes (`done`, `failed`) a task; false
    /// when it was cancelled or taken meanwhile.
    fn task(
        &self,
        id: &str,
        state: &str,
        message: &str,
    ) -> impl Future<Output = ApiResult<bool>> + Send;
    /// Dials back to console relay `session` and bridges it to `serial`
    /// (in the background, until either side closes).
    fn console(
        &self,
        session: &str,
        serial: tokio::net::UnixStream,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// The keys to open an instance's volumes, and its user-data.
    fn keys(
        &self,
        instance_id: &str,
        req: &KeysRequest,
    ) -> impl Future<Output = ApiResult<Keys>> + Send;
}

/// The instances of a node, as of change `generation`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkList {
    /// Pass it back as `after` to wait for the next change.
    pub generation: u64,
    pub instances: Vec<Work>,
}

/// The longest a node's agent may wait for a change in one request.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An instance placed on the node, as its agent needs it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Work {
    pub id: String,
    pub name: String,
    /// `running`, `stopped` or `deleted`: what the tenant asked.
    pub desired: String,
    /// What was last observed.
    pub state: String,
    pub status_message: String,
    /// Milliseconds since the instance last changed (a stop's timeout
    /// counts from the request; measured by the control plane's clock).
    pub changed_ms_ago: i64,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub boot_volume_id: String,
    pub ssh_keys: Vec<String>,
    pub volumes: Vec<WorkVolume>,
    /// Requests waiting for the agent to act on the running VM.
    #[serde(default)]
    pub tasks: Vec<TaskWork>,
}

/// A volume an instance holds (boot volume included).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkVolume {
    pub id: String,
    pub name: String,
    /// `attaching`, `attached` or `detaching`.
    pub state: String,
    pub size_bytes: i64,
}

/// What an agent tells about an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstanceReport {
    /// The instance is now `starting`, `running`, `stopped` or `failed`.
    State { state: String, message: String },
    /// A step toward the desired state, without changing the state.
    Note { message: String },
    /// The guest powered itself off: the instance is stopped.
    PoweredOff,
    /// The VM and its run files are gone: the instance may go.
    Removed,
}

/// Which volumes of the instance to open, and whether to build its seed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysRequest {
    pub volumes: Vec<String>,
    #[serde(default)]
    pub seed: bool,
}

/// The keys of an instance's volumes (and its user-data, for the seed).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Keys {
    pub disks: Vec<DiskKeys>,
    /// The cloud-init user-data, when asked for the seed and there is one.
    pub user_data: Option<String>,
}

/// One volume's chain of files, top first, each with its key.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DiskKeys {
    pub volume_id: String,
    pub size_bytes: i64,
    pub layers: Vec<KeyedLayer>,
}

/// A file of a chain, relative to the compute directory, and the base64
/// of the data key that opens it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyedLayer {
    pub file: String,
    pub key: String,
}

impl Drop for KeyedLayer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

const STATES: &[&str] = &["starting", "running", "stopped", "failed"];
const MAX_MESSAGE: usize = 4096;

fn not_here(what: &str, id: &str) -> ApiError {
    ApiError::not_found(what, id)
}

impl InstanceReport {
    fn check(&self) -> ApiResult<()> {
        let bad = |d: String| ApiError::bad_request("invalid_instance_report", d);
        match self {
            InstanceReport::State { state, message } => {
                if !STATES.contains(&state.as_str()) {
                    return Err(bad(format!(
                        "state must be one of {}, not {state:?}",
                        STATES.join(", ")
                    )));
                }
                if message.len() > MAX_MESSAGE {
                    return Err(bad(format!("message is longer than {MAX_MESSAGE} bytes")));
                }
            }
            InstanceReport::Note { message } if message.len() > MAX_MESSAGE => {
                return Err(bad(format!("message is longer than {MAX_MESSAGE} bytes")));
            }
            _ => {}
        }
        Ok(())
    }
}

impl Compute {
    /// Instance `id` if it is placed on `node_id` (else the same 404 as a
    /// missing one: a node learns nothing of other nodes' instances).
    async fn placed(&self, node_id: &str, id: &str) -> ApiResult<InstanceRow> {
        match self.0.store.instance_by_id(id).await? {
            Some(i) if i.node_id.as_deref() == Some(node_id) => Ok(i),
            _ => Err(not_here("instance", id)),
        }
    }

    /// The instances placed on `node_id`, with their volumes.
    pub async fn work_for(&self, node_id: &str) -> ApiResult<Vec<Work>> {
        let now = now_ms();
        let mut tasks = self.pending_tasks(node_id).await?;
        let mut out = Vec::new();
        // Three reads per pass, however many instances the node runs.
        let mut volumes_of: std::collections::HashMap<String, Vec<VolumeRow>> =
            std::collections::HashMap::new();
        for v in self.0.store.node_volumes(node_id).await? {
            let held_by = v.instance_id.clone().unwrap_or_default();
            volumes_of.entry(held_by).or_default().push(v);
        }
        for i in self.0.store.instances_on_node(node_id).await? {
            let volumes = volumes_of.remove(&i.id).unwrap_or_default();
            let (mine, rest): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|(id, _)| *id == i.id);
            tasks = rest;
            out.push(Work {
                tasks: mine.into_iter().map(|(_, t)| t).collect(),
                ssh_keys: serde_json::from_str(&i.ssh_keys).unwrap_or_default(),
                volumes: volumes
                    .into_iter()
                    .map(|v| WorkVolume {
                        id: v.id,
                        name: v.name,
                        state: v.state,
                        size_bytes: v.size_bytes,
                    })
                    .collect(),
                changed_ms_ago: (now - i.updated_at).max(0),
                id: i.id,
                name: i.name,
                desired: i.desired,
                state: i.state,
                status_message: i.status_message,
                vcpus: i.vcpus,
                memory_mib: i.memory_mib,
                boot_volume_id: i.boot_volume_id,
            });
        }
        Ok(out)
    }

    /// The work of `node_id`, once tenants changed something since
    /// generation `after` (or `wait` passed, at most [`MAX_WAIT`]); at once
    /// without `after`.
    pub async fn work_after(
        &self,
        node_id: &str,
        after: Option<u64>,
        wait: std::time::Duration,
    ) -> ApiResult<WorkList> {
        let mut rx = self.0.changes.subscribe();
        if after == Some(*rx.borrow_and_update()) {
            let _ = tokio::time::timeout(wait.min(MAX_WAIT), rx.changed()).await;
        }
        let generation = *rx.borrow();
        Ok(WorkList {
            generation,
            instances: self.work_for(node_id).await?,
        })
    }

    /// Takes what node `node_id`'s agent reports about instance `id`.
    pub async fn take_report(&self, node_id: &str, id: &str, r: &InstanceReport) -> ApiResult<()> {
        r.check()?;
        let i = self.placed(node_id, id).await?;
        let store = &self.0.store;
        match r {
            InstanceReport::State { state, message } => {
                store.instance_set_state(&i.id, state, message).await
            }
            InstanceReport::Note { message } => store.instance_note(&i.id, message).await,
            InstanceReport::PoweredOff => {
                store
                    .instance_set_desired(&i.id, "stopped", "stopped", "the guest powered off")
                    .await
            }
            InstanceReport::Removed => {
                if i.desired != "deleted" {
                    return Err(ApiError::conflict(
                        "instance_not_deleted",
                        format!("instance {} is not being deleted", i.name),
                    ));
                }
                self.remove_deleted(&i).await
            }
        }
    }

    /// Removes the rows, boot volume and keys of a deleted instance whose
    /// VM is gone.
    pub(crate) async fn remove_deleted(&self, i: &InstanceRow) -> ApiResult<()> {
        let boot = self.0.store.volume_by_id(&i.boot_volume_id).await?;
        self.0.store.instance_remove(i).await?;
        if let Some(b) = boot {
            self.release(&crate::snapshots::layers_of(&b.layers)?)
                .await?;
        }
        self.0.kms.data_key_delete(&i.data_key_id).await
    }

    /// A volume held by an instance of `node_id`, with that instance.
    async fn held(&self, node_id: &str, volume_id: &str) -> ApiResult<(VolumeRow, InstanceRow)> {
        let v = self
            .0
            .store
            .volume_by_id(volume_id)
            .await?
            .ok_or_else(|| not_here("volume", volume_id))?;
        let Some(instance_id) = v.instance_id.clone() else {
            return Err(not_here("volume", volume_id));
        };
        let i = self
            .placed(node_id, &instance_id)
            .await
            .map_err(|_| not_here("volume", volume_id))?;
        Ok((v, i))
    }

    /// Settles a volume's attachment as node `node_id`'s agent saw it.
    pub async fn take_attachment(
        &self,
        node_id: &str,
        volume_id: &str,
        state: &str,
    ) -> ApiResult<()> {
        if !matches!(state, "attached" | "available") {
            return Err(ApiError::bad_request(
                "invalid_attachment",
                format!("an attachment settles as attached or available, not {state:?}"),
            ));
        }
        let (v, _) = self.held(node_id, volume_id).await?;
        self.0.store.volume_set_attachment(&v.id, state).await
    }

    /// The keys node `node_id` needs to open volumes of instance `id` (all
    /// of them held by it) and, for `seed`, the instance's user-data; with
    /// the key uses and the instance, for the platform's and the tenant's
    /// audit logs.
    pub async fn keys_for(
        &self,
        node_id: &str,
        id: &str,
        req: &KeysRequest,
    ) -> ApiResult<(Keys, Vec<KeyUse>, InstanceRow)> {
        let i = self.placed(node_id, id).await?;
        if req.volumes.len() > crate::agent::MAX_DISKS {
            return Err(ApiError::bad_request(
                "too_many_volumes",
                format!(
                    "an instance holds at most {} volumes",
                    crate::agent::MAX_DISKS
                ),
            ));
        }
        let why = Purpose {
            justification: Justification::ServiceForPrincipal,
            principal: Some(i.created_by.clone()),
            request_id: None,
        };
        let mut uses = Vec::new();
        let mut disks = Vec::with_capacity(req.volumes.len());
        for vid in &req.volumes {
            let v = match self.0.store.volume_by_id(vid).await? {
                Some(v) if v.instance_id.as_deref() == Some(i.id.as_str()) => v,
                _ => return Err(not_here("volume", vid)),
            };
            let mut layers = Vec::new();
            for l in crate::snapshots::layers_of(&v.layers)? {
                let LayerRef {
                    file,
                    data_key_id,
                    project_id,
                    owner,
                } = l;
                let (key, used) = self
                    .0
                    .kms
                    .unwrap(&project_id, &data_key_id, &owner, &why)
                    .await?;
                uses.push(used);
                layers.push(KeyedLayer {
                    file,
                    key: B64.encode(key.expose()),
                });
            }
            disks.push(DiskKeys {
                volume_id: v.id,
                size_bytes: v.size_bytes,
                layers,
            });
        }
        let user_data = if req.seed {
            let (key, used) = self
                .0
                .kms
                .unwrap(&i.project_id, &i.data_key_id, &i.id, &why)
                .await?;
            uses.push(used);
            open_user_data(&key, &i)?
        } else {
            None
        };
        Ok((Keys { disks, user_data }, uses, i))
    }
}

/// The link of the node a server embeds: the service itself.
#[derive(Clone)]
pub struct LocalLink {
    pub compute: Compute,
    pub node_id: String,
}

impl Link for LocalLink {
    async fn work(&self) -> ApiResult<Vec<Work>> {
        self.compute.work_for(&self.node_id).await
    }

    async fn report(&self, instance_id: &str, r: &InstanceReport) -> ApiResult<()> {
        self.compute
            .take_report(&self.node_id, instance_id, r)
            .await
    }

    async fn attachment(&self, volume_id: &str, state: &str) -> ApiResult<()> {
        self.compute
            .take_attachment(&self.node_id, volume_id, state)
            .await
    }

    async fn task(&self, id: &str, state: &str, message: &str) -> ApiResult<bool> {
        self.compute
            .take_task_step(&self.node_id, id, state, message)
            .await
    }

    async fn console(&self, _session: &str, _serial: tokio::net::UnixStream) -> ApiResult<()> {
        Err(ApiError::internal(
            "the consoles of this server's own node are opened directly",
        ))
    }

    async fn keys(&self, instance_id: &str, req: &KeysRequest) -> ApiResult<Keys> {
        self.compute
            .keys_for(&self.node_id, instance_id, req)
            .await
            .map(|(k, _, _)| k)
    }
}
