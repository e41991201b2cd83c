//! The node agent: converges the instances placed on this node toward
//! what their tenants asked, and records what it saw.
//!
//! Every pass looks at each instance afresh — its row, and its VM's run
//! directory (`<compute>/vm/<instance id>`, see `nuage_qemu::machine`) —
//! and takes the one step that brings them closer: create the boot disk,
//! build the seed and start QEMU; plug or unplug a volume; ask the guest
//! to power off, then kill it after the stop timeout; remove what a
//! deleted instance leaves. Steps are idempotent, so a pass killed at any
//! point is finished by the next one, and a restarted server re-attaches
//! to the QEMU processes that kept running (they are daemonized) instead
//! of starting them again. A QEMU that died on its own is reported
//! `failed` with its last words; its volumes are untouched.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nuage_core::model::kms::Justification;
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::Purpose;
use nuage_qemu::machine::{self, VmState};
use nuage_qemu::seed::Seed;
use nuage_qemu::{Chain, DiskSpec, Vm, VmSpec};
use nuage_store::{InstanceRow, VolumeRow};
use tokio::sync::watch;

use crate::instances::open_user_data;
use crate::service::{qemu_err, Compute, LayerRef};

/// Volumes one instance may hold, boot volume included (a VM has eight
/// hot-plug slots and the seed takes one).
pub const MAX_DISKS: usize = 7;

/// How often the agent looks even when nobody wakes it.
const PASS_EVERY: Duration = Duration::from_secs(2);
/// How long a guest has to let go of a volume being detached.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the agent of node `node_id` until `stop` turns true.
pub async fn run(compute: Compute, mut stop: watch::Receiver<bool>) {
    let spares = tokio::spawn(crate::spares::fill(compute.clone(), stop.clone()));
    loop {
        if let Err(e) = compute.reconcile().await {
            tracing::warn!(error = %e.detail, "compute reconcile pass failed");
        }
        tokio::select! {
            _ = compute.0.wake.notified() => {}
            _ = tokio::time::sleep(PASS_EVERY) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    let _ = spares.await;
}

/// The name of a volume's disk inside QEMU, and the serial the guest sees.
pub(crate) fn disk_name(volume_id: &str) -> String {
    let tail: String = volume_id
        .chars()
        .rev()
        .take(19)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("d{}", tail.to_ascii_lowercase())
}

fn serial(volume_id: &str) -> String {
    let n = volume_id.len();
    volume_id[n.saturating_sub(20)..].to_string()
}

impl Compute {
    pub(crate) fn vm_dir(&self, instance_id: &str) -> PathBuf {
        self.path("vm").join(instance_id)
    }

    /// The Unix socket of the instance's serial console.
    pub fn console_socket(&self, i: &InstanceRow) -> PathBuf {
        machine::serial_socket(&self.vm_dir(&i.id))
    }

    /// Kills every VM this node runs (tests, and an operator draining a
    /// node for good): a server restart alone never does this.
    pub fn kill_all_vms(&self) -> usize {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(self.path("vm")) {
            for e in rd.flatten() {
                if machine::kill_dir(&e.path()) {
                    n += 1;
                }
                let _ = std::fs::remove_file(self.seed_path(&e.file_name().to_string_lossy()));
            }
        }
        n
    }

    /// At shutdown: removes the seed directory if no VM still needs a seed
    /// in it (running VMs keep theirs; the next start reuses the directory).
    pub fn release_seed_dir(&self) {
        let _ = std::fs::remove_dir(&self.0.cfg.seed_dir);
    }

    fn seed_path(&self, instance_id: &str) -> PathBuf {
        self.0.cfg.seed_dir.join(format!("{instance_id}.iso"))
    }

    /// The open handle of a running VM, re-attaching after a restart.
    pub(crate) async fn vm(&self, instance_id: &str) -> ApiResult<Arc<Vm>> {
        if let Some(vm) = self
            .0
            .vms
            .lock()
            .ok()
            .and_then(|m| m.get(instance_id).cloned())
        {
            if vm.qmp().is_connected() {
                return Ok(vm);
            }
        }
        let vm = Arc::new(
            Vm::attach(&self.vm_dir(instance_id))
                .await
                .map_err(qemu_err)?,
        );
        if let Ok(mut m) = self.0.vms.lock() {
            m.insert(instance_id.to_string(), vm.clone());
        }
        Ok(vm)
    }

    fn forget_vm(&self, instance_id: &str) {
        if let Ok(mut m) = self.0.vms.lock() {
            m.remove(instance_id);
        }
    }

    /// One pass over the instances of this node.
    pub async fn reconcile(&self) -> ApiResult<()> {
        let Some(node) = self.local_node().map(str::to_string) else {
            return Ok(());
        };
        let _one = self.0.reconciling.lock().await;
        for i in self.0.store.instances_on_node(&node).await? {
            if let Err(e) = self.reconcile_one(&i).await {
                tracing::warn!(instance = %i.id, error = %e.detail, "reconcile failed");
                if i.desired != "deleted" {
                    self.0
                        .store
                        .instance_set_state(&i.id, "failed", &e.detail)
                        .await?;
                }
            }
        }
        Ok(())
    }

    fn purpose(i: &InstanceRow) -> Purpose {
        Purpose {
            justification: Justification::ServiceForPrincipal,
            principal: Some(i.created_by.clone()),
            request_id: None,
        }
    }

    async fn reconcile_one(&self, i: &InstanceRow) -> ApiResult<()> {
        let dir = self.vm_dir(&i.id);
        let status = machine::dir_status(&dir);
        let alive = matches!(status.state, VmState::Running | VmState::Paused);
        match i.desired.as_str() {
            "deleted" => self.remove(i, alive).await,
            "stopped" => {
                if alive {
                    self.stop_step(i).await
                } else {
                    self.forget_vm(&i.id);
                    machine::cleanup(&dir).map_err(qemu_err)?;
                    let _ = std::fs::remove_file(self.seed_path(&i.id));
                    self.settle_volumes(i, &HashSet::new(), false).await?;
                    if i.state != "stopped" {
                        self.0
                            .store
                            .instance_set_state(&i.id, "stopped", "")
                            .await?;
                    }
                    Ok(())
                }
            }
            _ => {
                if alive {
                    if i.state != "running" {
                        // A launch cut short (the agent was killed) leaves
                        // QEMU paused before its guest ever ran: start over.
                        let vm = self.vm(&i.id).await?;
                        if matches!(i.state.as_str(), "creating" | "starting")
                            && vm.status().await.state == VmState::Paused
                        {
                            machine::kill_dir(&dir);
                            self.forget_vm(&i.id);
                            return Ok(());
                        }
                        self.0
                            .store
                            .instance_set_state(&i.id, "running", "")
                            .await?;
                    }
                    self.converge_disks(i).await
                } else if status.state == VmState::Failed && i.state == "running" {
                    self.forget_vm(&i.id);
                    self.0
                        .store
                        .instance_set_state(&i.id, "failed", &status.detail)
                        .await
                } else if i.state == "running" {
                    // The guest powered itself off: the instance is stopped.
                    self.forget_vm(&i.id);
                    machine::cleanup(&dir).map_err(qemu_err)?;
                    self.0
                        .store
                        .instance_set_desired(&i.id, "stopped", "stopped", "the guest powered off")
                        .await
                } else if matches!(i.state.as_str(), "creating" | "starting") {
                    self.launch(i).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Creates the boot disk if missing, builds the seed, starts QEMU with
    /// every attached volume.
    async fn launch(&self, i: &InstanceRow) -> ApiResult<()> {
        let why = Self::purpose(i);
        let dir = self.vm_dir(&i.id);
        machine::cleanup(&dir).map_err(qemu_err)?;
        let volumes = self.0.store.instance_volumes(&i.id).await?;
        let boot = volumes
            .iter()
            .find(|v| v.id == i.boot_volume_id)
            .ok_or_else(|| ApiError::internal("the instance has no boot volume"))?;
        self.ensure_volume_file(boot, &why).await?;
        let (boot_chain, _) = self.chain(&layers_of(boot)?, &why).await?;
        let mut data = Vec::new();
        let mut attached = HashSet::new();
        for v in volumes.iter().filter(|v| v.id != i.boot_volume_id) {
            if v.state == "detaching" {
                continue;
            }
            let (chain, _) = self.chain(&layers_of(v)?, &why).await?;
            data.push(disk_spec(v, chain));
            attached.insert(v.id.clone());
        }

        let (key, _) = self
            .0
            .kms
            .unwrap(&i.project_id, &i.data_key_id, &i.id, &why)
            .await?;
        // The seed directory is made by the first launch, so a server that
        // never runs a VM leaves nothing in /dev/shm, even when killed.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.0.cfg.seed_dir)
                .map_err(crate::service::io_err("create the seed directory"))?;
        }
        let seed_path = self.seed_path(&i.id);
        let _ = std::fs::remove_file(&seed_path);
        let seed = Seed {
            instance_id: i.id.clone(),
            hostname: i.name.clone(),
            ssh_keys: serde_json::from_str(&i.ssh_keys).unwrap_or_default(),
            user_data: open_user_data(&key, i)?,
            network_config: None,
        };
        seed.build(&seed_path).await.map_err(qemu_err)?;

        let accel = self
            .0
            .node
            .get()
            .map(|(_, a)| *a)
            .unwrap_or(nuage_qemu::Accel::Tcg);
        let spec = VmSpec {
            id: i.id.clone(),
            vcpus: u32::try_from(i.vcpus).map_err(|_| ApiError::invalid("vcpus"))?,
            memory_mib: u64::try_from(i.memory_mib).map_err(|_| ApiError::invalid("memory"))?,
            accel,
            boot_disk: DiskSpec::new("boot", boot_chain),
            data_disks: data,
            seed: Some(seed_path),
            nics: Vec::new(),
            nice: self.0.cfg.vm_nice,
        };
        self.0
            .store
            .instance_set_state(&i.id, "starting", "starting QEMU")
            .await?;
        let vm = Vm::launch(&spec, &dir).await.map_err(qemu_err)?;
        if let Ok(mut m) = self.0.vms.lock() {
            m.insert(i.id.clone(), Arc::new(vm));
        }
        self.settle_volumes(i, &attached, true).await?;
        self.0.store.instance_set_state(&i.id, "running", "").await
    }

    /// Creates a volume's top file (an encrypted qcow2, an overlay when it
    /// has a base) if a crash came before it was made.
    async fn ensure_volume_file(&self, v: &VolumeRow, why: &Purpose) -> ApiResult<()> {
        let layers = layers_of(v)?;
        let Some(top) = layers.first() else {
            return Err(ApiError::internal("a volume without files"));
        };
        let file = self.path(&top.file);
        if file.exists() {
            return Ok(());
        }
        let (key, _) = self
            .disk_key(&top.project_id, &top.data_key_id, &top.owner, why)
            .await?;
        let size = u64::try_from(v.size_bytes).unwrap_or(0);
        let backing = layers.get(1).map(|b| self.path(&b.file));
        // A spare the request set aside for this volume is already
        // encrypted with its data key.
        let aside = self.0.spares.set_aside_path(&v.id);
        if aside.exists() {
            match nuage_qemu::disk::adopt(&aside, &file, backing.as_deref(), size, &key).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(volume = %v.id, error = %e, "a set-aside spare could not be adopted");
                    let _ = std::fs::remove_file(&aside);
                }
            }
        }
        self.make_disk(None, &file, backing.as_deref(), size, &key)
            .await
            .map_err(qemu_err)
    }

    /// Plugs volumes being attached and unplugs volumes being detached.
    async fn converge_disks(&self, i: &InstanceRow) -> ApiResult<()> {
        let volumes = self.0.store.instance_volumes(&i.id).await?;
        let pending = volumes
            .iter()
            .any(|v| matches!(v.state.as_str(), "attaching" | "detaching"));
        if !pending {
            return Ok(());
        }
        let vm = self.vm(&i.id).await?;
        let present = plugged(&vm).await?;
        let why = Self::purpose(i);
        for v in volumes.iter().filter(|v| v.id != i.boot_volume_id) {
            let name = disk_name(&v.id);
            match v.state.as_str() {
                "attaching" => {
                    if !present.contains(&name) {
                        let (chain, _) = self.chain(&layers_of(v)?, &why).await?;
                        if let Err(e) = vm.attach_disk(&disk_spec(v, chain)).await {
                            self.0
                                .store
                                .volume_set_attachment(&v.id, "available")
                                .await?;
                            return Err(ApiError::internal(format!(
                                "volume {} could not be attached: {e}",
                                v.name
                            )));
                        }
                    }
                    self.0
                        .store
                        .volume_set_attachment(&v.id, "attached")
                        .await?;
                }
                "detaching" => {
                    if present.contains(&name) {
                        vm.detach_disk(&name, DETACH_TIMEOUT).await.map_err(|e| {
                            ApiError::internal(format!(
                                "the guest did not release volume {}: {e}",
                                v.name
                            ))
                        })?;
                    }
                    self.0
                        .store
                        .volume_set_attachment(&v.id, "available")
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// With the VM down (or just started with `attached`), completes
    /// pending attachments: attaching → attached, detaching → available.
    async fn settle_volumes(
        &self,
        i: &InstanceRow,
        attached: &HashSet<String>,
        running: bool,
    ) -> ApiResult<()> {
        for v in self.0.store.instance_volumes(&i.id).await? {
            match v.state.as_str() {
                "attaching" if !running || attached.contains(&v.id) => {
                    self.0
                        .store
                        .volume_set_attachment(&v.id, "attached")
                        .await?
                }
                "detaching" => {
                    self.0
                        .store
                        .volume_set_attachment(&v.id, "available")
                        .await?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Asks the guest to power off once; kills QEMU when it has not after
    /// the stop timeout (or at once for a forced stop).
    async fn stop_step(&self, i: &InstanceRow) -> ApiResult<()> {
        let force = i.status_message == "force";
        let waited = Duration::from_millis(u64::try_from(now_ms() - i.updated_at).unwrap_or(0));
        if force || waited > self.0.cfg.stop_timeout {
            machine::kill_dir(&self.vm_dir(&i.id));
            self.forget_vm(&i.id);
            return Ok(());
        }
        if i.status_message.is_empty() {
            let vm = self.vm(&i.id).await?;
            vm.powerdown().await.map_err(qemu_err)?;
            // Keep updated_at: the timeout counts from the request.
            sqlx_free_note(self, i, "asked the guest to power off").await?;
        }
        Ok(())
    }

    /// Removes a deleted instance: its VM, seed, run directory, boot volume
    /// (file and key) and row; other volumes are detached and kept.
    async fn remove(&self, i: &InstanceRow, alive: bool) -> ApiResult<()> {
        let dir = self.vm_dir(&i.id);
        if alive {
            machine::kill_dir(&dir);
            self.forget_vm(&i.id);
            // The next pass (right away) removes the rest once QEMU is gone.
            self.wake_agent();
            return Ok(());
        }
        self.forget_vm(&i.id);
        machine::cleanup(&dir).map_err(qemu_err)?;
        let _ = std::fs::remove_file(self.seed_path(&i.id));
        let _ = std::fs::remove_file(self.0.spares.set_aside_path(&i.boot_volume_id));
        let boot = self.0.store.volume_by_id(&i.boot_volume_id).await?;
        self.0.store.instance_remove(i).await?;
        if let Some(b) = boot {
            self.release(&layers_of(&b)?).await?;
        }
        self.0.kms.data_key_delete(&i.data_key_id).await
    }
}

/// Records a step of a stop without moving `updated_at` (the stop timeout
/// counts from the request).
async fn sqlx_free_note(c: &Compute, i: &InstanceRow, note: &str) -> ApiResult<()> {
    c.0.store.instance_note(&i.id, note).await
}

fn layers_of(v: &VolumeRow) -> ApiResult<Vec<LayerRef>> {
    crate::snapshots::layers_of(&v.layers)
}

fn disk_spec(v: &VolumeRow, chain: Chain) -> DiskSpec {
    DiskSpec {
        name: disk_name(&v.id),
        serial: serial(&v.id),
        chain,
    }
}

/// The data disks QEMU has now (device ids), from QOM.
async fn plugged(vm: &Vm) -> ApiResult<HashSet<String>> {
    let list = vm
        .qmp()
        .execute(
            "qom-list",
            serde_json::json!({"path": "/machine/peripheral"}),
        )
        .await
        .map_err(qemu_err)?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str())
                .filter(|n| n.starts_with('d'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_and_serials_fit_qemu_limits() {
        let id = "vol_01a210e41171763d9ceb4180cc70edb5";
        let n = disk_name(id);
        assert_eq!(n.len(), 20);
        assert!(n.starts_with('d'));
        assert_eq!(serial(id).len(), 20);
        assert!(id.ends_with(&serial(id)));
        assert_ne!(
            disk_name("vol_aaaa0000000000000000000000000001"),
            disk_name("vol_aaaa0000000000000000000000000002")
        );
    }
}
