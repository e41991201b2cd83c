//! One VM = one QEMU process and one run directory.
//!
//! QEMU is started with `-daemonize`: it detaches (new session, parent
//! init, stdio on /dev/null, its stderr in `qemu.log`) and its launcher
//! exits once QEMU is ready, so the VM outlives the agent and no pipe ties
//! it to us. The run directory holds everything needed to find it again
//! ([`Vm::attach`]): `qemu.pid`, `vm-id`, `qmp.sock`, `serial.sock` and
//! `console.log` (the serial output, kept even when nobody is connected).
//! A pid is trusted only if `/proc/<pid>/cmdline` names this directory's
//! pid file and this VM's id, so a reused pid is never mistaken for it.
//!
//! QEMU starts paused (`-S`) with no disk on its command line: disks are
//! added over QMP (`secret` objects carrying the keys, `blockdev-add`,
//! `device_add`) and then the guest is let go with `cont`. So no key is
//! ever on a command line.
//!
//! Names inside QEMU, for a disk called `d` (see [`DiskSpec`]): device
//! `d`, layer nodes `d.l0` (top) … `d.lN`, their file nodes `d.l<i>f`,
//! secrets `d.k<i>`; snapshot overlays `d.s<n>` with secret `d.ks<n>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::accel::Accel;
use crate::chain::{check_path, Chain, Layer};
use crate::error::{Error, Result};
use crate::qmp::{self, Qmp};

/// The QEMU program (from `PATH`).
pub const QEMU: &str = "qemu-system-x86_64";
/// Hot-plug slots: one `pcie-root-port` per disk (and later NIC).
pub const ROOT_PORTS: usize = 8;

pub const QMP_SOCKET: &str = "qmp.sock";
pub const SERIAL_SOCKET: &str = "serial.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const PID_FILE: &str = "qemu.pid";
pub const QEMU_LOG: &str = "qemu.log";
pub const START_LOG: &str = "qemu-start.log";
pub const ID_FILE: &str = "vm-id";

/// `sun_path` is 108 bytes with its NUL.
const MAX_SOCKET_PATH: usize = 107;
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
const SEED_NODE: &str = "seed";

/// A disk as the VM sees it.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Short handle, unique in the VM: `[a-z][a-z0-9-]{0,19}` (QEMU node
    /// names are limited to 31 bytes); not `seed`.
    pub name: String,
    /// The virtio serial the guest sees (`/sys/block/vdX/serial`), 1-20
    /// of `[A-Za-z0-9._-]`.
    pub serial: String,
    pub chain: Chain,
}

impl DiskSpec {
    /// A disk whose serial is its name.
    pub fn new(name: &str, chain: Chain) -> Self {
        DiskSpec {
            name: name.to_string(),
            serial: name.to_string(),
            chain,
        }
    }

    fn validate(&self) -> Result<()> {
        let n = &self.name;
        let ok = (1..=20).contains(&n.len())
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n != SEED_NODE
            && !n.starts_with("rp");
        if !ok {
            return Err(Error::invalid(
                "disk name",
                format!("{n:?}: 1-20 of [a-z0-9-] starting with a letter, not 'seed' or 'rp…'"),
            ));
        }
        let s = &self.serial;
        if !(1..=20).contains(&s.len())
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::invalid(
                "disk serial",
                format!("{s:?}: 1-20 of [A-Za-z0-9._-]"),
            ));
        }
        Ok(())
    }
}

/// A network interface. Placeholder: private networks come later, and
/// `VmSpec::nics` exists now so adding them breaks no caller. Must be empty.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NicSpec {}

/// What to run.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// `[A-Za-z0-9_-]{1,64}`; named in QEMU's command line (`-name`).
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    pub boot_disk: DiskSpec,
    pub data_disks: Vec<DiskSpec>,
    /// The NoCloud seed ISO ([`crate::seed`]), attached read-only.
    pub seed: Option<PathBuf>,
    pub nics: Vec<NicSpec>,
    /// CPU niceness of QEMU (0–19): above 0, the node's control plane and
    /// agent get the CPU first when guests keep every core busy.
    pub nice: i32,
}

impl VmSpec {
    pub fn validate(&self) -> Result<()> {
        check_vm_id(&self.id)?;
        if !(1..=64).contains(&self.vcpus) {
            return Err(Error::invalid("vcpus", format!("{}: 1 to 64", self.vcpus)));
        }
        if !(0..=19).contains(&self.nice) {
            return Err(Error::invalid("nice", format!("{}: 0 to 19", self.nice)));
        }
        if !(64..=1 << 20).contains(&self.memory_mib) {
            return Err(Error::invalid(
                "memory",
                format!("{} MiB: 64 MiB to 1 TiB", self.memory_mib),
            ));
        }
        let disks: Vec<&DiskSpec> = std::iter::once(&self.boot_disk)
            .chain(&self.data_disks)
            .collect();
        for (i, d) in disks.iter().enumerate() {
            d.validate()?;
            if disks[..i].iter().any(|o| o.name == d.name) {
                return Err(Error::invalid(
                    "disk name",
                    format!("{} is used twice", d.name),
                ));
            }
        }
        let ports = disks.len() + usize::from(self.seed.is_some());
        if ports > ROOT_PORTS {
            return Err(Error::invalid(
                "disks",
                format!("{ports} devices, but a VM has {ROOT_PORTS} slots"),
            ));
        }
        if let Some(s) = &self.seed {
            check_path(s)?;
        }
        if !self.nics.is_empty() {
            return Err(Error::invalid(
                "nics",
                "network interfaces are not supported yet",
            ));
        }
        Ok(())
    }
}

fn check_vm_id(id: &str) -> Result<()> {
    if (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        Ok(())
    } else {
        Err(Error::invalid(
            "vm id",
            format!("{id:?}: 1-64 of [A-Za-z0-9_-]"),
        ))
    }
}

/// The observed state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Guest code is running.
    Running,
    /// QEMU is up but the guest is not running (`-S`, paused, shutting
    /// down); `detail` has QEMU's status.
    Paused,
    /// QEMU exited cleanly (it removed its pid file).
    Stopped,
    /// QEMU died, or the guest is in an error state; `detail` says why.
    Failed,
}

/// [`VmState`] plus the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    pub state: VmState,
    pub detail: String,
}

/// A handle on a running VM. Dropping it leaves the VM running.
pub struct Vm {
    dir: PathBuf,
    id: String,
    pid: i32,
    qmp: Qmp,
    /// Serialises disk operations (port choice, node names).
    ops: Mutex<()>,
}

impl Vm {
    /// Starts QEMU for `spec` in run directory `dir` (created 0700 if
    /// missing), adds its disks and seed over QMP, and lets the guest run.
    /// On failure the QEMU process is killed.
    pub async fn launch(spec: &VmSpec, dir: &Path) -> Result<Vm> {
        spec.validate()?;
        check_path(dir)?;
        for s in [QMP_SOCKET, SERIAL_SOCKET] {
            let len = dir.join(s).as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(Error::invalid(
                    "run dir",
                    format!(
                        "{}: socket path would be {len} bytes (max {MAX_SOCKET_PATH})",
                        dir.display()
                    ),
                ));
            }
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
        }
        if let Some(pid) = read_pid(dir) {
            if is_our_qemu(pid, dir, &spec.id).is_ok() {
                return Err(Error::invalid(
                    "run dir",
                    format!("QEMU {pid} already runs in {}", dir.display()),
                ));
            }
        }
        for f in [QMP_SOCKET, SERIAL_SOCKET, PID_FILE] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        std::fs::write(dir.join(ID_FILE), &spec.id).map_err(|e| Error::io("write vm-id", e))?;
        let start_log = dir.join(START_LOG);
        let stderr = std::fs::File::create(&start_log)
            .map_err(|e| Error::io(format!("create {}", start_log.display()), e))?;

        let mut cmd = tokio::process::Command::new(QEMU);
        cmd.args(qemu_args(spec, dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if spec.nice > 0 {
            let nice = spec.nice;
            // SAFETY: runs in the forked child before exec and makes one
            // raw syscall (setpriority), which is async-signal-safe; every
            // thread QEMU starts inherits the niceness.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setpriority_process(None, nice)?;
                    Ok(())
                });
            }
        }
        tracing::info!(vm = %spec.id, dir = %dir.display(), accel = spec.accel.as_str(), "starting QEMU");
        let status = tokio::time::timeout(LAUNCH_TIMEOUT, cmd.status())
            .await
            .map_err(|_| Error::timeout(LAUNCH_TIMEOUT, "QEMU to start"))?
            .map_err(|e| Error::io(format!("cannot start {QEMU}"), e))?;
        if !status.success() {
            let log = std::fs::read_to_string(&start_log).unwrap_or_default();
            return Err(Error::Tool {
                tool: QEMU.into(),
                status: status.to_string(),
                stderr: log.trim().to_string(),
            });
        }
        let pid = read_pid(dir)
            .ok_or_else(|| Error::NotRunning("QEMU started but wrote no pid file".into()))?;
        is_our_qemu(pid, dir, &spec.id).map_err(Error::NotRunning)?;
        let qmp = match Qmp::connect(&dir.join(QMP_SOCKET), QMP_TIMEOUT).await {
            Ok(q) => q,
            Err(e) => {
                kill_pid(pid);
                return Err(e);
            }
        };
        let vm = Vm {
            dir: dir.to_path_buf(),
            id: spec.id.clone(),
            pid,
            qmp,
            ops: Mutex::new(()),
        };
        if let Err(e) = vm.boot(spec).await {
            tracing::warn!(vm = %spec.id, error = %e, "VM setup failed; killing QEMU");
            kill_pid(pid);
            return Err(e);
        }
        Ok(vm)
    }

    async fn boot(&self, spec: &VmSpec) -> Result<()> {
        self.add_disk(&spec.boot_disk, Some(1)).await?;
        for d in &spec.data_disks {
            self.add_disk(d, None).await?;
        }
        if let Some(seed) = &spec.seed {
            self.add_seed(seed).await?;
        }
        self.qmp.execute("cont", Value::Null).await?;
        Ok(())
    }

    /// Re-attaches to the VM of run directory `dir` (after an agent
    /// restart). Fails if its QEMU is gone or the pid is not its QEMU.
    pub async fn attach(dir: &Path) -> Result<Vm> {
        let id = read_id(dir)?;
        let pid = read_pid(dir).ok_or_else(|| Error::Attach {
            dir: dir.display().to_string(),
            why: "no pid file (QEMU exited or never started)".into(),
        })?;
        is_our_qemu(pid, dir, &id).map_err(|why| Error::Attach {
            dir: dir.display().to_string(),
            why,
        })?;
        let qmp = Qmp::connect(&dir.join(QMP_SOCKET), QMP_TIMEOUT).await?;
        Ok(Vm {
            dir: dir.to_path_buf(),
            id,
            pid,
            qmp,
            ops: Mutex::new(()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The QMP session, for what this type does not wrap.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The process check, then QMP `query-status`.
    pub async fn status(&self) -> VmStatus {
        if let Err(why) = is_our_qemu(self.pid, &self.dir, &self.id) {
            return dead_status(&self.dir, &why);
        }
        match self
            .qmp
            .execute_timeout("query-status", Value::Null, Duration::from_secs(5))
            .await
        {
            Ok(v) => {
                let s = v["status"].as_str().unwrap_or("unknown").to_string();
                let state = match s.as_str() {
                    "running" => VmState::Running,
                    "internal-error" | "guest-panicked" | "io-error" => VmState::Failed,
                    _ => VmState::Paused,
                };
                VmStatus { state, detail: s }
            }
            Err(e) => {
                if is_our_qemu(self.pid, &self.dir, &self.id).is_err() {
                    return dead_status(&self.dir, "QEMU exited");
                }
                VmStatus {
                    state: VmState::Failed,
                    detail: format!("QEMU {} does not answer QMP: {e}", self.pid),
                }
            }
        }
    }

    /// Presses the ACPI power button.
    pub async fn powerdown(&self) -> Result<()> {
        self.qmp.execute("system_powerdown", Value::Null).await?;
        Ok(())
    }

    /// Kills QEMU at once (SIGKILL), if it is still this VM's QEMU.
    pub fn kill(&self) -> Result<()> {
        is_our_qemu(self.pid, &self.dir, &self.id).map_err(Error::NotRunning)?;
        kill_pid(self.pid);
        Ok(())
    }

    /// Waits until QEMU has exited.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while is_our_qemu(self.pid, &self.dir, &self.id).is_ok() {
            if start.elapsed() > timeout {
                return Err(Error::timeout(
                    timeout,
                    format!("QEMU {} to exit", self.pid),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Hot-plugs `disk` into a free slot.
    pub async fn attach_disk(&self, disk: &DiskSpec) -> Result<()> {
        disk.validate()?;
        self.add_disk(disk, None).await
    }

    /// Hot-unplugs disk `name`: `device_del`, wait for the guest to let go
    /// (`DEVICE_DELETED`), then drop its nodes and secrets.
    pub async fn detach_disk(&self, name: &str, timeout: Duration) -> Result<()> {
        let _g = self.ops.lock().await;
        let mut events = self.qmp.subscribe();
        self.qmp.execute("device_del", json!({"id": name})).await?;
        qmp::wait_event(
            &mut events,
            "DEVICE_DELETED",
            |d| d["device"].as_str() == Some(name),
            timeout,
        )
        .await?;
        self.remove_nodes(name).await
    }

    /// Grows disk `name` while the VM runs (`block_resize`); shrinking is
    /// refused with [`Error::Shrink`].
    pub async fn resize_disk(&self, name: &str, new_size: u64) -> Result<()> {
        let _g = self.ops.lock().await;
        let top = self.top_of(name).await?;
        if new_size < top.virtual_size {
            return Err(Error::Shrink {
                current: top.virtual_size,
                requested: new_size,
            });
        }
        if new_size == top.virtual_size {
            return Ok(());
        }
        self.qmp
            .execute(
                "block_resize",
                json!({"node-name": top.node, "size": new_size}),
            )
            .await?;
        Ok(())
    }

    /// Crash-consistent external snapshot of disk `name` while the VM
    /// runs: creates `overlay` (encrypted, backed by the current top file),
    /// opens it with its key, and makes it the new top with
    /// `blockdev-snapshot`. Returns the path of the now frozen file — the
    /// snapshot's content. (`blockdev-snapshot-sync` is not used: on a
    /// LUKS node it would create an unencrypted overlay.)
    pub async fn snapshot_disk(&self, name: &str, overlay: &Layer) -> Result<PathBuf> {
        let _g = self.ops.lock().await;
        let top = self.top_of(name).await?;
        crate::disk::create_overlay(&overlay.path, &top.file, top.virtual_size, &overlay.key)
            .await?;
        let nodes = self.node_names().await?;
        let prefix = format!("{name}.s");
        let n = (0..1000)
            .find(|i| !nodes.contains(&format!("{prefix}{i}")))
            .ok_or_else(|| Error::invalid("snapshot", "too many snapshots on one disk"))?;
        let node = format!("{prefix}{n}");
        let secret = format!("{name}.ks{n}");
        let result = async {
            self.qmp.add_secret(&secret, &overlay.key).await?;
            self.qmp
                .execute(
                    "blockdev-add",
                    json!({
                        "driver": "qcow2",
                        "node-name": node,
                        "encrypt": {"format": "luks", "key-secret": secret},
                        "file": {"driver": "file", "node-name": format!("{node}f"),
                                 "filename": overlay.path.to_string_lossy()},
                        "backing": null,
                    }),
                )
                .await?;
            self.qmp
                .execute(
                    "blockdev-snapshot",
                    json!({"node": top.node, "overlay": node}),
                )
                .await
        }
        .await;
        if let Err(e) = result {
            let _ = self
                .qmp
                .execute("blockdev-del", json!({"node-name": node}))
                .await;
            let _ = self.qmp.execute("object-del", json!({"id": secret})).await;
            let _ = std::fs::remove_file(&overlay.path);
            return Err(e);
        }
        Ok(top.file)
    }

    async fn add_disk(&self, disk: &DiskSpec, bootindex: Option<u32>) -> Result<()> {
        let _g = self.ops.lock().await;
        let port = self.free_port().await?;
        let result = async {
            for (i, layer) in disk.chain.layers().iter().enumerate() {
                self.qmp
                    .add_secret(&Chain::secret_id(&disk.name, i), &layer.key)
                    .await?;
            }
            self.qmp
                .execute("blockdev-add", disk.chain.blockdev(&disk.name, true))
                .await?;
            let mut dev = json!({
                "driver": "virtio-blk-pci",
                "id": disk.name,
                "drive": Chain::node_name(&disk.name, 0),
                "serial": disk.serial,
                "bus": port,
            });
            if let Some(b) = bootindex {
                dev["bootindex"] = json!(b);
            }
            self.qmp.execute("device_add", dev).await
        }
        .await;
        if let Err(e) = result {
            let _ = self.remove_nodes(&disk.name).await;
            return Err(e);
        }
        Ok(())
    }

    async fn add_seed(&self, path: &Path) -> Result<()> {
        let _g = self.ops.lock().await;
        let port = self.free_port().await?;
        self.qmp
            .execute(
                "blockdev-add",
                json!({
                    "driver": "raw", "node-name": SEED_NODE, "read-only": true,
                    "file": {"driver": "file", "node-name": format!("{SEED_NODE}f"),
                             "filename": path.to_string_lossy(), "read-only": true},
                }),
            )
            .await?;
        self.qmp
            .execute(
                "device_add",
                json!({"driver": "virtio-blk-pci", "id": SEED_NODE, "drive": SEED_NODE,
                       "serial": "cidata", "bus": port}),
            )
            .await?;
        Ok(())
    }

    /// The first root port with nothing plugged in. Asked of QOM (the
    /// port's bus lists its devices as `child[N]` links): `query-pci` shows
    /// nothing behind a port until the firmware has numbered the buses,
    /// so it cannot be used before `cont`.
    async fn free_port(&self) -> Result<String> {
        for i in 0..ROOT_PORTS {
            let port = format!("rp{i}");
            let props = self
                .qmp
                .execute(
                    "qom-list",
                    json!({"path": format!("/machine/peripheral/{port}/{port}")}),
                )
                .await?;
            let used = props
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"].as_str().is_some_and(|n| n.starts_with("child[")));
            if !used {
                return Ok(port);
            }
        }
        Err(Error::invalid(
            "disks",
            format!("all {ROOT_PORTS} slots are in use"),
        ))
    }

    async fn node_names(&self) -> Result<Vec<String>> {
        let nodes = self
            .qmp
            .execute("query-named-block-nodes", json!({"flat": true}))
            .await?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["node-name"].as_str().map(str::to_string))
            .collect())
    }

    /// Deletes every block node and secret of disk `name` (best effort,
    /// top down: a node in use by another cannot go first).
    async fn remove_nodes(&self, name: &str) -> Result<()> {
        let prefix = format!("{name}.");
        for _ in 0..16 {
            let ours: Vec<String> = self
                .node_names()
                .await?
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            if ours.is_empty() {
                break;
            }
            let mut progress = false;
            for n in &ours {
                if self
                    .qmp
                    .execute("blockdev-del", json!({"node-name": n}))
                    .await
                    .is_ok()
                {
                    progress = true;
                }
            }
            if !progress {
                return Err(Error::Protocol(format!(
                    "could not delete the block nodes {ours:?} of disk {name}"
                )));
            }
        }
        let objects = self
            .qmp
            .execute("qom-list", json!({"path": "/objects"}))
            .await?;
        let secrets = format!("{name}.k");
        for o in objects.as_array().into_iter().flatten() {
            if let Some(id) = o["name"].as_str().filter(|id| id.starts_with(&secrets)) {
                self.qmp.execute("object-del", json!({"id": id})).await?;
            }
        }
        Ok(())
    }

    /// The node a disk's device reads from, its file and size.
    async fn top_of(&self, name: &str) -> Result<Top> {
        let blocks = self.qmp.execute("query-block", Value::Null).await?;
        let qdev = format!("/machine/peripheral/{name}/");
        let b = blocks
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["qdev"].as_str().is_some_and(|q| q.starts_with(&qdev)))
            .ok_or_else(|| Error::invalid("disk", format!("no disk {name} in this VM")))?;
        let ins = &b["inserted"];
        let (Some(node), Some(virtual_size)) = (
            ins["node-name"].as_str(),
            ins["image"]["virtual-size"].as_u64(),
        ) else {
            return Err(Error::Protocol(format!(
                "query-block: no medium for {name}"
            )));
        };
        // The qcow2 node's own filename is a json: description; its file
        // node (named `<node>f` by this module) has the plain path.
        let file_node = format!("{node}f");
        let nodes = self
            .qmp
            .execute("query-named-block-nodes", json!({"flat": true}))
            .await?;
        let file = nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node-name"].as_str() == Some(file_node.as_str()))
            .and_then(|n| n["file"].as_str())
            .ok_or_else(|| Error::Protocol(format!("no file node {file_node} for disk {name}")))?;
        Ok(Top {
            node: node.to_string(),
            file: PathBuf::from(file),
            virtual_size,
        })
    }
}

struct Top {
    node: String,
    file: PathBuf,
    virtual_size: u64,
}

fn qemu_args(spec: &VmSpec, dir: &Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut a: Vec<String> = [
        "-name",
        &format!("guest={},debug-threads=on", spec.id),
        "-nodefaults",
        "-no-user-config",
        "-machine",
        &format!("q35,accel={}", spec.accel.as_str()),
        "-cpu",
        "max",
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
        "-display",
        "none",
        "-S",
        "-boot",
        "strict=on",
        // seccomp; not elevateprivileges=deny (it forbids -daemonize's setsid).
        "-sandbox",
        "on,obsolete=deny,resourcecontrol=deny",
        "-chardev",
        &format!("socket,id=qmp,path={},server=on,wait=off", p(QMP_SOCKET)),
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        &format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            p(SERIAL_SOCKET),
            p(CONSOLE_LOG)
        ),
        "-serial",
        "chardev:serial0",
        "-pidfile",
        &p(PID_FILE),
        "-daemonize",
        "-D",
        &p(QEMU_LOG),
        "-msg",
        "timestamp=on",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..ROOT_PORTS {
        a.push("-device".into());
        a.push(format!(
            "pcie-root-port,id=rp{i},bus=pcie.0,chassis={}",
            i + 1
        ));
    }
    a
}

fn read_id(dir: &Path) -> Result<String> {
    let id = std::fs::read_to_string(dir.join(ID_FILE)).map_err(|e| Error::Attach {
        dir: dir.display().to_string(),
        why: format!("no vm-id: {e}"),
    })?;
    check_vm_id(id.trim())?;
    Ok(id.trim().to_string())
}

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Ok if `pid` is alive (not a zombie) and is the QEMU of `dir` for VM
/// `id`; otherwise why not.
fn is_our_qemu(pid: i32, dir: &Path, id: &str) -> std::result::Result<(), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|_| format!("QEMU process {pid} is gone"))?;
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return Err(format!("QEMU process {pid} has exited"));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| format!("QEMU process {pid} is gone"))?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let pidfile = dir.join(PID_FILE).display().to_string();
    let name = format!("guest={id},");
    let after = |flag: &[u8]| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_vec())
    };
    let ours = after(b"-pidfile").as_deref() == Some(pidfile.as_bytes())
        && after(b"-name").is_some_and(|n| n.starts_with(name.as_bytes()));
    if ours {
        Ok(())
    } else {
        Err(format!(
            "process {pid} is not the QEMU of VM {id} (pid reused?)"
        ))
    }
}

fn kill_pid(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// The status of a VM whose QEMU is not running, from its run directory:
/// a clean exit removes the pid file, a crash or `kill -9` leaves it.
fn dead_status(dir: &Path, why: &str) -> VmStatus {
    if dir.join(PID_FILE).exists() {
        let log = std::fs::read_to_string(dir.join(QEMU_LOG)).unwrap_or_default();
        let last = log.lines().rev().find(|l| !l.trim().is_empty());
        VmStatus {
            state: VmState::Failed,
            detail: match last {
                Some(l) => format!(
                    "{why} without a clean shutdown; last log line: {}",
                    l.trim()
                ),
                None => format!("{why} without a clean shutdown (killed or crashed)"),
            },
        }
    } else {
        VmStatus {
            state: VmState::Stopped,
            detail: "QEMU exited cleanly".into(),
        }
    }
}

/// The status of the VM in `dir` without QMP (process check only).
pub fn dir_status(dir: &Path) -> VmStatus {
    let (Ok(id), Some(pid)) = (read_id(dir), read_pid(dir)) else {
        return dead_status(dir, "QEMU is not running");
    };
    match is_our_qemu(pid, dir, &id) {
        Ok(()) => VmStatus {
            state: VmState::Running,
            detail: format!("QEMU {pid} is alive"),
        },
        Err(why) => dead_status(dir, &why),
    }
}

/// Kills (SIGKILL) the QEMU of `dir` if it is alive; true if one was.
/// Synchronous, for `Drop` guards and teardown paths.
pub fn kill_dir(dir: &Path) -> bool {
    let (Ok(id), Some(pid)) = (read_id(dir), read_pid(dir)) else {
        return false;
    };
    if is_our_qemu(pid, dir, &id).is_ok() {
        kill_pid(pid);
        true
    } else {
        false
    }
}

/// Removes the run directory once its QEMU is gone.
pub fn cleanup(dir: &Path) -> Result<()> {
    if let (Ok(id), Some(pid)) = (read_id(dir), read_pid(dir)) {
        if is_our_qemu(pid, dir, &id).is_ok() {
            return Err(Error::invalid(
                "cleanup",
                format!("QEMU {pid} still runs in {}", dir.display()),
            ));
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

/// The path of the interactive serial console socket of `dir`. One client
/// at a time; a client must keep reading, or the guest's serial output
/// (and `console.log`) stalls once the socket buffer is full.
pub fn serial_socket(dir: &Path) -> PathBuf {
    dir.join(SERIAL_SOCKET)
}

/// The last `max_bytes` of the serial console log (lossy UTF-8).
pub fn console_log(dir: &Path, max_bytes: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(CONSOLE_LOG);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    let len = f.metadata().map_err(|e| Error::io("console log", e))?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
        .map_err(|e| Error::io("console log", e))?;
    let mut buf = Vec::new();
    f.take(max_bytes)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("console log", e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
