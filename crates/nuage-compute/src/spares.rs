//! Spare disks: empty encrypted qcow2 files made ahead of need.
//!
//! Creating an encrypted qcow2 runs QEMU's LUKS PBKDF benchmark, over a
//! second of CPU whatever the iteration time (about 2 s on the test
//! machines): most of an instance's start. So the node keeps a few empty
//! encrypted files ready, each under a fresh random key held only in this
//! process's memory. A request that needs a new disk takes one: the
//! spare's key becomes the disk's data key, wrapped by the project key like
//! any other, and the file is grown and pointed at its base in
//! milliseconds ([`nuage_qemu::disk::adopt`]). A spare holds no tenant data
//! until it is taken, and one whose key is gone (a dropped spare, a
//! restarted server) is deleted.
//!
//! Nothing is made until the node holds an image or first needs a disk,
//! so a control plane that runs no VMs never pays for spares.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nuage_kms::aead::SecretKey;
use nuage_qemu::DiskKey;
use tokio::sync::{watch, Notify};

use crate::service::Compute;

/// After a failed creation (no qemu-img, a full disk), wait this long
/// before the next demand may try again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// While a spare is left, wait this long after a disk was taken before
/// making the next: the guest that took it is booting and needs the CPU.
const REFILL_AFTER: Duration = Duration::from_secs(10);

/// The spares of this node.
pub(crate) struct Spares {
    dir: PathBuf,
    target: usize,
    ready: Mutex<Vec<Spare>>,
    /// Set once something asked for a disk or brought an image.
    wanted: AtomicBool,
    want: Notify,
}

/// An empty encrypted disk and its key; deleted when dropped unused.
pub(crate) struct Spare {
    path: PathBuf,
    key: SecretKey,
}

impl Spare {
    /// The key the disk is encrypted with: the new disk's data key.
    pub(crate) fn key(&self) -> &SecretKey {
        &self.key
    }

    /// Makes the spare the disk `dest` (see [`nuage_qemu::disk::adopt`]);
    /// on failure the spare is gone and the caller creates the disk the
    /// slow way with the same key.
    pub(crate) async fn adopt(
        mut self,
        dest: &Path,
        backing: Option<&Path>,
        size: u64,
    ) -> nuage_qemu::Result<()> {
        let key = DiskKey::from_data_key(self.key.expose())?;
        nuage_qemu::disk::adopt(&self.path, dest, backing, size, &key).await?;
        self.path = PathBuf::new();
        Ok(())
    }

    /// Moves the spare to `path` for the agent to adopt later (the disk's
    /// key is recorded by then, so the file is no longer this spare's).
    pub(crate) fn set_aside(mut self, path: &Path) {
        if std::fs::rename(&self.path, path).is_ok() {
            self.path = PathBuf::new();
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Spares {
    /// Spares under `dir` (created 0700; whatever a previous run left
    /// there is deleted: nobody holds those keys any more).
    pub(crate) fn open(dir: PathBuf, target: usize) -> std::io::Result<Spares> {
        use std::os::unix::fs::DirBuilderExt;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Spares {
            dir,
            target,
            ready: Mutex::new(Vec::new()),
            wanted: AtomicBool::new(false),
            want: Notify::new(),
        })
    }

    /// A ready spare, if any; asks for another in any case.
    pub(crate) fn take(&self) -> Option<Spare> {
        let spare = self.ready.lock().ok().and_then(|mut r| r.pop());
        self.wake();
        spare
    }

    /// Starts (or resumes) making spares.
    pub(crate) fn wake(&self) {
        if self.target > 0 {
            self.wanted.store(true, Ordering::Relaxed);
            self.want.notify_one();
        }
    }

    /// Where a spare set aside for volume `volume_id` waits.
    pub(crate) fn set_aside_path(&self, volume_id: &str) -> PathBuf {
        set_aside_in(&self.dir, volume_id)
    }

    fn missing(&self) -> usize {
        let have = self.ready.lock().map(|r| r.len()).unwrap_or(self.target);
        self.target.saturating_sub(have)
    }

    /// Makes one spare: `making-<n>.qcow2` while qemu-img works, then
    /// `spare-<n>.qcow2` once ready.
    async fn make_one(&self) -> nuage_qemu::Result<()> {
        let key = SecretKey::generate();
        let n = uuid::Uuid::new_v4().simple();
        let making = self.dir.join(format!("making-{n}.qcow2"));
        let path = self.dir.join(format!("spare-{n}.qcow2"));
        nuage_qemu::disk::create_spare(&making, &DiskKey::from_data_key(key.expose())?).await?;
        let mut spare = Spare { path: making, key };
        if let Err(e) = std::fs::rename(&spare.path, &path) {
            return Err(nuage_qemu::Error::Io {
                context: "rename a spare disk".into(),
                source: e,
            });
        }
        spare.path = path;
        if let Ok(mut r) = self.ready.lock() {
            r.push(spare);
        }
        Ok(())
    }
}

/// Keeps the node's spares topped up until `stop` turns true.
pub(crate) async fn fill(compute: Compute, mut stop: watch::Receiver<bool>) {
    let spares = &compute.0.spares;
    // A node that already holds images (a restart) will run VMs.
    let has_images = std::fs::read_dir(compute.path("images"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_images {
        spares.wake();
    }
    loop {
        if spares.wanted.load(Ordering::Relaxed) {
            let have = spares.target - spares.missing();
            if have > 0 && spares.missing() > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(REFILL_AFTER) => {}
                    _ = stop.changed() => return,
                }
            }
            while spares.missing() > 0 && !*stop.borrow() {
                let made = tokio::select! {
                    r = spares.make_one() => r,
                    _ = stop.changed() => return,
                };
                if let Err(e) = made {
                    tracing::warn!(error = %e, "a spare disk could not be made");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stop.changed() => return,
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = spares.want.notified() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Where a spare set aside for volume `volume_id` waits, in the spares
/// directory `dir`.
fn set_aside_in(dir: &Path, volume_id: &str) -> PathBuf {
    dir.join(format!("for-{volume_id}.qcow2"))
}

/// The same place, from the compute directory (an agent of a node of its
/// own sees the spares its control plane set aside, on shared storage).
pub(crate) fn set_aside_file(compute_dir: &Path, volume_id: &str) -> PathBuf {
    set_aside_in(&compute_dir.join("spares"), volume_id)
}
