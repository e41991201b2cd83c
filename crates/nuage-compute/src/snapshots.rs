//! Snapshots and resizing of volumes.
//!
//! A snapshot freezes the volume's current top file: the volume gets a new
//! encrypted overlay on top (made by qemu-img first, then — when a VM runs
//! — switched to with QMP `blockdev-snapshot`, so the copy is
//! crash-consistent; when nothing runs, exact), and the snapshot keeps the
//! chain below it. No bytes are copied. Files are shared between volumes
//! and snapshots, so a delete removes a file, or a data key, only when no
//! other chain still names it.

use nuage_core::id::{new_id, Kind};
use nuage_core::name;
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::Purpose;
use nuage_qemu::machine::{self, VmState};
use nuage_qemu::Layer;
use nuage_store::{InstanceRow, SnapshotRow, VolumeRow};

use crate::model::parse_size;
use crate::service::{qemu_err, Compute, LayerRef};
use crate::tasks::NodeTask;

pub(crate) fn layers_of(json: &str) -> ApiResult<Vec<LayerRef>> {
    serde_json::from_str(json)
        .map_err(|e| ApiError::internal(format!("unreadable chain of files: {e}")))
}

fn encode(layers: &[LayerRef]) -> ApiResult<String> {
    serde_json::to_string(layers)
        .map_err(|e| ApiError::internal(format!("layers do not encode: {e}")))
}

/// Who has volume `v` open, for a change of its files.
enum Holder {
    /// Nobody: the files change with qemu-img.
    Nobody,
    /// A VM on this server's node, through its QMP handle, as disk `.1`.
    Local(std::sync::Arc<nuage_qemu::Vm>, String),
    /// A running VM on a node of its own: its agent does it, as a task.
    Remote(Box<InstanceRow>, String),
}

impl Compute {
    /// Who holds `v`, with the name of its disk in that VM.
    async fn holder(&self, v: &VolumeRow) -> ApiResult<Holder> {
        let Some(instance_id) = &v.instance_id else {
            return Ok(Holder::Nobody);
        };
        let i = self
            .0
            .store
            .instance_by_id(instance_id)
            .await?
            .ok_or_else(|| ApiError::internal("the volume's instance is gone"))?;
        let disk = if i.boot_volume_id == v.id {
            "boot".to_string()
        } else {
            crate::agent::disk_name(&v.id)
        };
        if !self.is_local(&i) {
            // The VM's process is on another host: its state says.
            return match (i.state.as_str(), i.desired.as_str()) {
                ("stopped", "stopped") => Ok(Holder::Nobody),
                ("running", "running") => Ok(Holder::Remote(Box::new(i), disk)),
                (state, _) => Err(ApiError::conflict(
                    "instance_busy",
                    format!(
                        "volume {} is held by instance {}, which is {state}; try again when it \
                         settles",
                        v.name, i.name
                    ),
                )),
            };
        }
        let status = machine::dir_status(&self.0.host.vm_dir(instance_id));
        if !matches!(status.state, VmState::Running | VmState::Paused) {
            return Ok(Holder::Nobody);
        }
        Ok(Holder::Local(self.0.host.vm(&i.id).await?, disk))
    }

    /// Snapshots volume `v` as `name`.
    pub async fn snapshot_create(
        &self,
        v: &VolumeRow,
        name: &str,
        created_by: &str,
        why: &Purpose,
    ) -> ApiResult<SnapshotRow> {
        name::validate("snapshot", name)?;
        // No agent step (attach, stop …) while the chain changes.
        let _one = self.0.host.reconciling.lock().await;
        let v = self
            .0
            .store
            .volume_by_id(&v.id)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", &v.name))?;
        if matches!(v.state.as_str(), "attaching" | "detaching" | "creating") {
            return Err(ApiError::conflict(
                "volume_busy",
                format!(
                    "volume {} is {}; try again when it settles",
                    v.name, v.state
                ),
            ));
        }
        let frozen = layers_of(&v.layers)?;
        let top = frozen
            .first()
            .ok_or_else(|| ApiError::internal("a volume without files"))?
            .clone();
        let file = format!("volumes/{}-{}.qcow2", v.id, uuid::Uuid::new_v4().simple());
        let new_top = LayerRef {
            file: file.clone(),
            data_key_id: v.data_key_id.clone(),
            project_id: v.project_id.clone(),
            owner: v.id.clone(),
        };
        let mut now_layers = vec![new_top];
        now_layers.extend(frozen.iter().cloned());
        let t = now_ms();
        let snap = SnapshotRow {
            id: new_id(Kind::Project).replacen("prj_", "snap_", 1),
            org_id: v.org_id.clone(),
            project_id: v.project_id.clone(),
            name: name.to_string(),
            volume_id: v.id.clone(),
            size_bytes: v.size_bytes,
            layers: encode(&frozen)?,
            state: "available".into(),
            status_message: String::new(),
            created_by: created_by.to_string(),
            generation: 1,
            created_at: t,
            updated_at: t,
        };
        // The key first: a revoked or destroyed project key stops here,
        // with nothing written.
        let (key, _) = self
            .disk_key(&v.project_id, &v.data_key_id, &v.id, why)
            .await?;
        // The rows next: should the switch below not happen, the agent
        // makes the missing top file as an empty overlay, which holds the
        // same disk.
        self.0
            .store
            .snapshot_create(&snap, &encode(&now_layers)?)
            .await?;
        let path = self.path(&file);
        let switched = match self.holder(&v).await {
            Ok(Holder::Local(vm, disk)) => vm
                .snapshot_disk(&disk, &Layer::new(&path, key))
                .await
                .map(|_| ())
                .map_err(qemu_err),
            Ok(Holder::Remote(i, disk)) => {
                let task = NodeTask::Snapshot {
                    volume_id: v.id.clone(),
                    disk,
                };
                match self.run_on_node(&i, &task, "snapshot a volume").await {
                    // Claimed but not finished: the agent may still switch
                    // to the new file, so the rows stay as they are.
                    Err(e) if e.code == "node_task_timeout" => return Err(e),
                    other => other,
                }
            }
            Ok(Holder::Nobody) => {
                let size = u64::try_from(v.size_bytes).unwrap_or(0);
                nuage_qemu::disk::create_overlay(&path, &self.path(&top.file), size, &key)
                    .await
                    .map_err(qemu_err)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = switched {
            self.0.store.snapshot_delete(&snap.id).await?;
            self.0
                .store
                .volume_set_state(&v.id, &v.state, &v.status_message, &v.layers, v.size_bytes)
                .await?;
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(snap)
    }

    /// Deletes a snapshot; the files it alone held go.
    pub async fn snapshot_delete(&self, s: &SnapshotRow) -> ApiResult<()> {
        self.0.store.snapshot_delete(&s.id).await?;
        self.release(&layers_of(&s.layers)?).await
    }

    /// After a chain's row is gone: removes each of its volume files and
    /// volume data keys that no other chain names (image files and keys
    /// belong to their image).
    pub(crate) async fn release(&self, layers: &[LayerRef]) -> ApiResult<()> {
        for l in layers {
            if !l.file.starts_with("volumes/") {
                continue;
            }
            if self.0.store.layers_referencing(&l.file).await? == 0 {
                let _ = std::fs::remove_file(self.path(&l.file));
            }
            let owner_alive = self.0.store.volume_by_id(&l.owner).await?.is_some();
            if !owner_alive && self.0.store.layers_referencing(&l.data_key_id).await? == 0 {
                self.0.kms.data_key_delete(&l.data_key_id).await?;
            }
        }
        Ok(())
    }

    /// Grows a volume to `size` (also while a VM uses it); shrinking is
    /// refused and changes nothing.
    pub async fn volume_resize(&self, v: &VolumeRow, size: &str, why: &Purpose) -> ApiResult<()> {
        let size = parse_size(size)?;
        let current = u64::try_from(v.size_bytes).unwrap_or(0);
        if size < current {
            return Err(ApiError::bad_request(
                "volume_shrink",
                format!(
                    "volumes only grow: {} is {current} bytes, asked {size}",
                    v.name
                ),
            ));
        }
        if size == current {
            return Ok(());
        }
        let _one = self.0.host.reconciling.lock().await;
        match self.holder(v).await? {
            Holder::Local(vm, disk) => {
                vm.resize_disk(&disk, size).await.map_err(qemu_err)?;
            }
            Holder::Remote(i, disk) => {
                let task = NodeTask::Resize {
                    disk,
                    size_bytes: size,
                };
                self.run_on_node(&i, &task, "grow a volume").await?;
            }
            Holder::Nobody => {
                let (chain, _) = self.chain(&layers_of(&v.layers)?, why).await?;
                nuage_qemu::disk::resize(&chain, size)
                    .await
                    .map_err(qemu_err)?;
            }
        }
        let size = i64::try_from(size).map_err(|_| ApiError::invalid("size too large"))?;
        self.0.store.volume_set_size(&v.id, size).await
    }
}
