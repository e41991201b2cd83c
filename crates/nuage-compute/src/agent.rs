//! The node agent: converges the instances placed on a node toward what
//! their tenants asked, and tells the control plane what it saw.
//!
//! Every pass looks at each instance afresh — what the control plane says
//! of it (through a [`Link`]), and its VM's run directory
//! (`<compute>/vm/<instance id>`, see `nuage_qemu::machine`) — and takes
//! the one step that brings them closer: create the boot disk, build the
//! seed and start QEMU; plug or unplug a volume; ask the guest to power
//! off, then kill it after the stop timeout; remove what a deleted
//! instance leaves. Steps are idempotent, so a pass killed at any point is
//! finished by the next one, and a restarted agent re-attaches to the QEMU
//! processes that kept running (they are daemonized) instead of starting
//! them again. A QEMU that died on its own is reported `failed` with its
//! last words; its volumes are untouched.
//!
//! The same [`Host`] runs the node a server embeds (its link is the
//! service itself) and a node of its own (`nuage agent`, whose link is the
//! control plane's `/agent/v1` routes).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use nuage_core::{ApiError, ApiResult};
use nuage_qemu::machine::{self, VmState};
use nuage_qemu::seed::Seed;
use nuage_qemu::{Accel, Chain, DiskKey, DiskSpec, Layer, Vm, VmSpec};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::link::{DiskKeys, InstanceReport, KeyedLayer, KeysRequest, Link, LocalLink, Work};
use crate::service::{io_err, qemu_err, Compute, ComputeConfig};
use crate::tasks::NodeTask;

/// Volumes one instance may hold, boot volume included (a VM has eight
/// hot-plug slots and the seed takes one).
pub const MAX_DISKS: usize = 7;

/// How often the agent looks even when nobody wakes it.
pub const PASS_EVERY: Duration = Duration::from_secs(2);
/// How long a guest has to let go of a volume being detached.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the agent of the node this server embeds until `stop` turns true.
pub async fn run(compute: Compute, stop: watch::Receiver<bool>) {
    let Some(node_id) = compute.local_node().map(str::to_string) else {
        return;
    };
    let spares = tokio::spawn(crate::spares::fill(compute.clone(), stop.clone()));
    let sweep = tokio::spawn(crate::tasks::sweep(compute.clone(), stop.clone()));
    let link = LocalLink {
        compute: compute.clone(),
        node_id,
    };
    drive(compute.host(), &link, stop).await;
    let _ = spares.await;
    let _ = sweep.await;
}

/// Reconciles through `link` every [`PASS_EVERY`] (or when woken) until
/// `stop` turns true.
pub async fn drive<L: Link>(host: &Host, link: &L, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = host.reconcile(link).await {
            tracing::warn!(error = %e.detail, "compute reconcile pass failed");
        }
        tokio::select! {
            _ = host.wake.notified() => {}
            _ = tokio::time::sleep(PASS_EVERY) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
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

/// The VMs of one node: their run directories, seeds and QMP handles.
pub struct Host {
    dir: PathBuf,
    /// Where each VM's run directory is (pid file, QMP and serial sockets,
    /// console log): `<compute>/vm`, on every node (instance ids are
    /// unique, and a pid is trusted only when its process names its own
    /// directory, so nodes sharing the directory never act on each
    /// other's VMs).
    vm_root: PathBuf,
    seed_dir: PathBuf,
    stop_timeout: Duration,
    vm_nice: i32,
    accel: OnceLock<Accel>,
    /// Open QMP handles of running VMs, by instance id.
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    /// Wakes the agent when a tenant changes what it wants.
    pub(crate) wake: tokio::sync::Notify,
    /// One reconcile pass (or disk-chain change) at a time.
    pub(crate) reconciling: tokio::sync::Mutex<()>,
}

impl Host {
    /// The host of the disks under `cfg.dir`, running its VMs under
    /// `<cfg.dir>/vm` (made 0700 if missing).
    pub fn new(cfg: &ComputeConfig) -> std::io::Result<Host> {
        let vm_root = cfg.dir.join("vm");
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vm_root)?;
        Ok(Host {
            dir: cfg.dir.clone(),
            vm_root,
            seed_dir: cfg.seed_dir.clone(),
            stop_timeout: cfg.stop_timeout,
            vm_nice: cfg.vm_nice,
            accel: OnceLock::new(),
            vms: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            reconciling: tokio::sync::Mutex::new(()),
        })
    }

    /// The accelerator VMs start with (the node's probe decided it).
    pub fn set_accel(&self, accel: Accel) {
        let _ = self.accel.set(accel);
    }

    pub(crate) fn vm_dir(&self, instance_id: &str) -> PathBuf {
        self.vm_root.join(instance_id)
    }

    /// The Unix socket of the instance's serial console.
    pub fn console_socket(&self, instance_id: &str) -> PathBuf {
        machine::serial_socket(&self.vm_dir(instance_id))
    }

    /// Kills every VM this node runs (tests, and an operator draining a
    /// node for good): a restart alone never does this.
    pub fn kill_all_vms(&self) -> usize {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(&self.vm_root) {
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
        let _ = std::fs::remove_dir(&self.seed_dir);
    }

    fn seed_path(&self, instance_id: &str) -> PathBuf {
        self.seed_dir.join(format!("{instance_id}.iso"))
    }

    /// The open handle of a running VM, re-attaching after a restart.
    pub(crate) async fn vm(&self, instance_id: &str) -> ApiResult<Arc<Vm>> {
        if let Some(vm) = self
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
        if let Ok(mut m) = self.vms.lock() {
            m.insert(instance_id.to_string(), vm.clone());
        }
        Ok(vm)
    }

    fn forget_vm(&self, instance_id: &str) {
        if let Ok(mut m) = self.vms.lock() {
            m.remove(instance_id);
        }
    }

    /// A file named by the control plane, inside the compute directory
    /// (a name that would leave it is refused).
    fn file(&self, rel: &str) -> ApiResult<PathBuf> {
        let p = Path::new(rel);
        if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ApiError::internal(format!(
                "disk file {rel:?} is not inside the compute directory"
            )));
        }
        Ok(self.dir.join(p))
    }

    fn layer(&self, l: &KeyedLayer) -> ApiResult<Layer> {
        let raw = Zeroizing::new(
            B64.decode(&l.key)
                .map_err(|_| ApiError::internal("a disk key is not base64"))?,
        );
        let key = DiskKey::from_data_key(&raw).map_err(qemu_err)?;
        Ok(Layer::new(self.file(&l.file)?, key))
    }

    fn chain(&self, d: &DiskKeys) -> ApiResult<Chain> {
        let layers = d
            .layers
            .iter()
            .map(|l| self.layer(l))
            .collect::<ApiResult<Vec<_>>>()?;
        Chain::new(layers).map_err(qemu_err)
    }

    /// One pass over the instances of the node.
    pub async fn reconcile<L: Link>(&self, link: &L) -> ApiResult<()> {
        let _one = self.reconciling.lock().await;
        for w in link.work().await? {
            if let Err(e) = self.reconcile_one(link, &w).await {
                tracing::warn!(instance = %w.id, error = %e.detail, "reconcile failed");
                if w.desired != "deleted" {
                    link.report(&w.id, &state("failed", &e.detail)).await?;
                }
            }
            for t in &w.tasks {
                if !link.task(&t.id, "running", "").await? {
                    continue;
                }
                let (to, message) = match self.run_task(link, &w, &t.task).await {
                    Ok(()) => ("done", String::new()),
                    Err(e) => ("failed", e.detail),
                };
                link.task(&t.id, to, &message).await?;
            }
        }
        Ok(())
    }

    /// Does what a request asked of instance `w`'s running VM.
    async fn run_task<L: Link>(&self, link: &L, w: &Work, task: &NodeTask) -> ApiResult<()> {
        let status = machine::dir_status(&self.vm_dir(&w.id));
        if !matches!(status.state, VmState::Running | VmState::Paused) {
            return Err(ApiError::conflict(
                "instance_not_running",
                format!("instance {} is not running", w.name),
            ));
        }
        let vm = self.vm(&w.id).await?;
        match task {
            NodeTask::Reboot => vm
                .qmp()
                .execute("system_reset", serde_json::json!({}))
                .await
                .map(|_| ())
                .map_err(qemu_err),
            NodeTask::Snapshot { volume_id, disk } => {
                let keys = link
                    .keys(
                        &w.id,
                        &KeysRequest {
                            volumes: vec![volume_id.clone()],
                            seed: false,
                        },
                    )
                    .await?;
                let top = keys
                    .disks
                    .first()
                    .and_then(|d| d.layers.first())
                    .ok_or_else(|| ApiError::internal("no new top file for the snapshot"))?;
                vm.snapshot_disk(disk, &self.layer(top)?)
                    .await
                    .map(|_| ())
                    .map_err(qemu_err)
            }
            NodeTask::Resize { disk, size_bytes } => {
                vm.resize_disk(disk, *size_bytes).await.map_err(qemu_err)
            }
            NodeTask::Console { session } => {
                let serial = tokio::net::UnixStream::connect(self.console_socket(&w.id))
                    .await
                    .map_err(|e| {
                        ApiError::conflict(
                            "console_busy",
                            format!("the console is not available: {e}"),
                        )
                    })?;
                link.console(session, serial).await
            }
        }
    }

    async fn reconcile_one<L: Link>(&self, link: &L, w: &Work) -> ApiResult<()> {
        let dir = self.vm_dir(&w.id);
        let status = machine::dir_status(&dir);
        let alive = matches!(status.state, VmState::Running | VmState::Paused);
        match w.desired.as_str() {
            "deleted" => self.remove(link, w, alive).await,
            "stopped" => {
                if alive {
                    self.stop_step(link, w).await
                } else {
                    self.forget_vm(&w.id);
                    machine::cleanup(&dir).map_err(qemu_err)?;
                    let _ = std::fs::remove_file(self.seed_path(&w.id));
                    settle_volumes(link, w, &HashSet::new(), false).await?;
                    if w.state != "stopped" {
                        link.report(&w.id, &state("stopped", "")).await?;
                    }
                    Ok(())
                }
            }
            _ => {
                if alive {
                    if w.state != "running" {
                        // A launch cut short (the agent was killed) leaves
                        // QEMU paused before its guest ever ran: start over.
                        let vm = self.vm(&w.id).await?;
                        if matches!(w.state.as_str(), "creating" | "starting")
                            && vm.status().await.state == VmState::Paused
                        {
                            machine::kill_dir(&dir);
                            self.forget_vm(&w.id);
                            return Ok(());
                        }
                        link.report(&w.id, &state("running", "")).await?;
                    }
                    self.converge_disks(link, w).await
                } else if status.state == VmState::Failed && w.state == "running" {
                    self.forget_vm(&w.id);
                    link.report(&w.id, &state("failed", &status.detail)).await
                } else if w.state == "running" {
                    // The guest powered itself off: the instance is stopped.
                    self.forget_vm(&w.id);
                    machine::cleanup(&dir).map_err(qemu_err)?;
                    link.report(&w.id, &InstanceReport::PoweredOff).await
                } else if matches!(w.state.as_str(), "creating" | "starting") {
                    self.launch(link, w).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Creates the boot disk if missing, builds the seed, starts QEMU with
    /// every attached volume.
    async fn launch<L: Link>(&self, link: &L, w: &Work) -> ApiResult<()> {
        let dir = self.vm_dir(&w.id);
        machine::cleanup(&dir).map_err(qemu_err)?;
        let mut wanted = vec![w.boot_volume_id.clone()];
        wanted.extend(
            w.volumes
                .iter()
                .filter(|v| v.id != w.boot_volume_id && v.state != "detaching")
                .map(|v| v.id.clone()),
        );
        let keys = link
            .keys(
                &w.id,
                &KeysRequest {
                    volumes: wanted,
                    seed: true,
                },
            )
            .await?;
        let boot = keys
            .disks
            .iter()
            .find(|d| d.volume_id == w.boot_volume_id)
            .ok_or_else(|| ApiError::internal("the instance has no boot volume"))?;
        self.ensure_volume_file(boot).await?;
        let boot_chain = self.chain(boot)?;
        let mut data = Vec::new();
        let mut attached = HashSet::new();
        for d in keys
            .disks
            .iter()
            .filter(|d| d.volume_id != w.boot_volume_id)
        {
            data.push(disk_spec(&d.volume_id, self.chain(d)?));
            attached.insert(d.volume_id.clone());
        }

        // The seed directory is made by the first launch, so a node that
        // never runs a VM leaves nothing in /dev/shm, even when killed.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.seed_dir)
                .map_err(io_err("create the seed directory"))?;
        }
        let seed_path = self.seed_path(&w.id);
        let _ = std::fs::remove_file(&seed_path);
        let seed = Seed {
            instance_id: w.id.clone(),
            hostname: w.name.clone(),
            ssh_keys: w.ssh_keys.clone(),
            user_data: keys.user_data.clone(),
            network_config: None,
        };
        seed.build(&seed_path).await.map_err(qemu_err)?;

        let spec = VmSpec {
            id: w.id.clone(),
            vcpus: u32::try_from(w.vcpus).map_err(|_| ApiError::invalid("vcpus"))?,
            memory_mib: u64::try_from(w.memory_mib).map_err(|_| ApiError::invalid("memory"))?,
            accel: self.accel.get().copied().unwrap_or(Accel::Tcg),
            boot_disk: DiskSpec::new("boot", boot_chain),
            data_disks: data,
            seed: Some(seed_path),
            nics: Vec::new(),
            nice: self.vm_nice,
        };
        link.report(&w.id, &state("starting", "starting QEMU"))
            .await?;
        let vm = Vm::launch(&spec, &dir).await.map_err(qemu_err)?;
        if let Ok(mut m) = self.vms.lock() {
            m.insert(w.id.clone(), Arc::new(vm));
        }
        settle_volumes(link, w, &attached, true).await?;
        link.report(&w.id, &state("running", "")).await
    }

    /// Creates a volume's top file (an encrypted qcow2, an overlay when it
    /// has a base) if a crash came before it was made.
    async fn ensure_volume_file(&self, d: &DiskKeys) -> ApiResult<()> {
        let Some(top) = d.layers.first() else {
            return Err(ApiError::internal("a volume without files"));
        };
        let file = self.file(&top.file)?;
        if file.exists() {
            return Ok(());
        }
        let key = self.layer(top)?.key;
        let size = u64::try_from(d.size_bytes).unwrap_or(0);
        let backing = d.layers.get(1).map(|b| self.file(&b.file)).transpose()?;
        // A spare the request set aside for this volume is already
        // encrypted with its data key.
        let aside = crate::spares::set_aside_file(&self.dir, &d.volume_id);
        if aside.exists() {
            match nuage_qemu::disk::adopt(&aside, &file, backing.as_deref(), size, &key).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(volume = %d.volume_id, error = %e, "a set-aside spare could not be adopted");
                    let _ = std::fs::remove_file(&aside);
                }
            }
        }
        match backing {
            Some(b) => nuage_qemu::disk::create_overlay(&file, &b, size, &key).await,
            None => nuage_qemu::disk::create(&file, size, &key).await,
        }
        .map_err(qemu_err)
    }

    /// Plugs volumes being attached and unplugs volumes being detached.
    async fn converge_disks<L: Link>(&self, link: &L, w: &Work) -> ApiResult<()> {
        let pending = w
            .volumes
            .iter()
            .any(|v| matches!(v.state.as_str(), "attaching" | "detaching"));
        if !pending {
            return Ok(());
        }
        let vm = self.vm(&w.id).await?;
        let present = plugged(&vm).await?;
        for v in w.volumes.iter().filter(|v| v.id != w.boot_volume_id) {
            let name = disk_name(&v.id);
            match v.state.as_str() {
                "attaching" => {
                    if !present.contains(&name) {
                        let keys = link
                            .keys(
                                &w.id,
                                &KeysRequest {
                                    volumes: vec![v.id.clone()],
                                    seed: false,
                                },
                            )
                            .await?;
                        let d = keys
                            .disks
                            .first()
                            .ok_or_else(|| ApiError::internal("no keys for the volume"))?;
                        if let Err(e) = vm.attach_disk(&disk_spec(&v.id, self.chain(d)?)).await {
                            link.attachment(&v.id, "available").await?;
                            return Err(ApiError::internal(format!(
                                "volume {} could not be attached: {e}",
                                v.name
                            )));
                        }
                    }
                    link.attachment(&v.id, "attached").await?;
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
                    link.attachment(&v.id, "available").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Asks the guest to power off once; kills QEMU when it has not after
    /// the stop timeout (or at once for a forced stop).
    async fn stop_step<L: Link>(&self, link: &L, w: &Work) -> ApiResult<()> {
        let force = w.status_message == "force";
        let waited = Duration::from_millis(u64::try_from(w.changed_ms_ago).unwrap_or(0));
        if force || waited > self.stop_timeout {
            machine::kill_dir(&self.vm_dir(&w.id));
            self.forget_vm(&w.id);
            return Ok(());
        }
        if w.status_message.is_empty() {
            let vm = self.vm(&w.id).await?;
            vm.powerdown().await.map_err(qemu_err)?;
            // A note keeps the time of the request: the timeout counts
            // from it.
            link.report(
                &w.id,
                &InstanceReport::Note {
                    message: "asked the guest to power off".into(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Removes a deleted instance's VM, seed and run directory, then lets
    /// the control plane remove its boot volume (file and key) and row;
    /// other volumes are detached and kept.
    async fn remove<L: Link>(&self, link: &L, w: &Work, alive: bool) -> ApiResult<()> {
        let dir = self.vm_dir(&w.id);
        if alive {
            machine::kill_dir(&dir);
            self.forget_vm(&w.id);
            // The next pass (right away) removes the rest once QEMU is gone.
            self.wake.notify_one();
            return Ok(());
        }
        self.forget_vm(&w.id);
        machine::cleanup(&dir).map_err(qemu_err)?;
        let _ = std::fs::remove_file(self.seed_path(&w.id));
        let _ = std::fs::remove_file(crate::spares::set_aside_file(&self.dir, &w.boot_volume_id));
        link.report(&w.id, &InstanceReport::Removed).await
    }
}

fn state(state: &str, message: &str) -> InstanceReport {
    InstanceReport::State {
        state: state.to_string(),
        message: message.to_string(),
    }
}

/// With the VM down (or just started with `attached`), completes
/// pending attachments: attaching → attached, detaching → available.
async fn settle_volumes<L: Link>(
    link: &L,
    w: &Work,
    attached: &HashSet<String>,
    running: bool,
) -> ApiResult<()> {
    for v in &w.volumes {
        match v.state.as_str() {
            "attaching" if !running || attached.contains(&v.id) => {
                link.attachment(&v.id, "attached").await?
            }
            "detaching" => link.attachment(&v.id, "available").await?,
            _ => {}
        }
    }
    Ok(())
}

fn disk_spec(volume_id: &str, chain: Chain) -> DiskSpec {
    DiskSpec {
        name: disk_name(volume_id),
        serial: serial(volume_id),
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

    #[test]
    fn disk_files_stay_inside_the_compute_directory() {
        let cfg = ComputeConfig::for_dir(std::env::temp_dir().join("nuage-host-file-test"));
        let host = Host::new(&cfg).unwrap();
        assert!(host.file("volumes/vol_1.qcow2").is_ok());
        for bad in [
            "",
            "/etc/shadow",
            "../secret.qcow2",
            "volumes/../../x",
            "./v",
        ] {
            assert!(host.file(bad).is_err(), "{bad:?} was accepted");
        }
        let _ = std::fs::remove_dir_all(&cfg.dir);
    }
}
