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

pub(crate) fn layers_of(json: &str) -> ApiResult<Vec<LayerRef>> {
    serde_json::from_str(json)
        .map_err(|e| ApiError::internal(format!("unreadable chain of files: {e}")))
}

fn encode(layers: &[LayerRef]) -> ApiResult<String> {
    serde_json::to_string(layers)
        .map_err(|e| ApiError::internal(format!("layers do not encode: {e}")))
}

impl Compute {
    /// The running VM that holds `v`, with the name of its disk there.
    /// A VM on a node of its own is out of reach of QMP from here: its
    /// volumes change only while it is stopped.
    async fn holder(&self, v: &VolumeRow, what: &str) -> ApiResult<Option<(InstanceRow, String)>> {
        let Some(instance_id) = &v.instance_id else {
            return Ok(None);
        };
        let i = self
            .0
            .store
            .instance_by_id(instance_id)
            .await?
            .ok_or_else(|| ApiError::internal("the volume's instance is gone"))?;
        if self.on_local_node(&i, what).is_err() {
            if i.state == "stopped" && i.desired == "stopped" {
                return Ok(None);
            }
            return Err(ApiError::conflict(
                "instance_on_remote_node",
                format!(
                    "volume {} is held by instance {}, which runs on a node of its own: {what}",
                    v.name, i.name
                ),
            ));
        }
        let status = machine::dir_status(&self.0.host.vm_dir(instance_id));
        if !matches!(status.state, VmState::Running | VmState::Paused) {
            return Ok(None);
        }
        let disk = if i.boot_volume_id == v.id {
            "boot".to_string()
        } else {
            crate::agent::disk_name(&v.id)
        };
        Ok(Some((i, disk)))
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
        const LIVE: &str = "stop it to snapshot its volumes";
        let switched = match self.holder(&v, LIVE).await? {
            Some((i, disk)) => {
                let vm = self.local_vm(&i, LIVE).await?;
                vm.snapshot_disk(&disk, &Layer::new(&path, key))
                    .await
                    .map(|_| ())
            }
            None => {
                let size = u64::try_from(v.size_bytes).unwrap_or(0);
                nuage_qemu::disk::create_overlay(&path, &self.path(&top.file), size, &key).await
            }
        };
        if let Err(e) = switched {
            self.0.store.snapshot_delete(&snap.id).await?;
            self.0
                .store
                .volume_set_state(&v.id, &v.state, &v.status_message, &v.layers, v.size_bytes)
                .await?;
            let _ = std::fs::remove_file(&path);
            return Err(qemu_err(e));
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
        const LIVE: &str = "stop it to grow its volumes";
        match self.holder(v, LIVE).await? {
            Some((i, disk)) => {
                let vm = self.local_vm(&i, LIVE).await?;
                vm.resize_disk(&disk, size).await.map_err(qemu_err)?;
            }
            None => {
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
