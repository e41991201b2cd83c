//! The compute service: what the REST API calls to create, import, change
//! and delete images and volumes. Every disk file is an encrypted qcow2
//! whose LUKS key is a data key of the project key; the files live under
//! `<data dir>/compute/`, named by resource id, and the rows in the store
//! say which files (with which data keys) make up each disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::Stream;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::Project;
use nuage_core::name;
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::{KeyUse, Kms, Purpose};
use nuage_qemu::image::Source;
use nuage_qemu::{Chain, DiskKey, Layer};
use nuage_store::{ImageRow, InstanceRow, Store, VolumeRow};
use serde::{Deserialize, Serialize};

use crate::agent::Host;
use crate::model::{parse_size, CreateImage, CreateVolume, Visibility};
use crate::spares::{Spare, Spares};
use crate::spool::{Spool, SpoolError};

/// Where the service keeps its files, and its limits.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    /// `<data dir>/compute`.
    pub dir: PathBuf,
    /// Where cloud-init seeds are built: they carry the tenant's user-data
    /// in clear, so this is a tmpfs (memory), never a disk.
    pub seed_dir: PathBuf,
    /// The largest image upload accepted, bytes.
    pub max_image_bytes: u64,
    /// How long a guest has to power off after the ACPI request before
    /// its QEMU is killed.
    pub stop_timeout: std::time::Duration,
    /// Empty encrypted disks kept ready (see [`crate::spares`]); 0 makes
    /// every disk when it is asked for.
    pub spare_disks: usize,
    /// CPU niceness of the VMs' QEMU (0–19): guests yield to the control
    /// plane, so its API stays responsive on a node whose guests keep
    /// every core busy (guests only lose what the control plane uses).
    pub vm_nice: i32,
    /// Whether making a node schedulable needs a second, different
    /// operator to confirm it (the two-person rule).
    pub two_person_schedule: bool,
}

impl ComputeConfig {
    pub fn under(data_dir: &Path) -> ComputeConfig {
        ComputeConfig::for_dir(data_dir.join("compute"))
    }

    /// The defaults for the compute directory `dir`.
    pub fn for_dir(dir: PathBuf) -> ComputeConfig {
        ComputeConfig {
            seed_dir: seed_dir_for(&dir),
            dir,
            max_image_bytes: 64 << 30,
            stop_timeout: std::time::Duration::from_secs(60),
            spare_disks: 2,
            vm_nice: 10,
            two_person_schedule: false,
        }
    }
}

/// The seed directory of the node whose VMs run under `dir`: one per
/// directory, so nodes sharing a machine (tests) keep theirs apart.
pub fn seed_dir_for(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    PathBuf::from(format!("/dev/shm/nuage-seeds-{:016x}", h.finish()))
}

/// One file of a disk's chain, as stored in a row's `layers` (top first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Relative to the compute directory.
    pub file: String,
    /// The data key that encrypts it, of `project_id`'s key, owned by `owner`.
    pub data_key_id: String,
    pub project_id: String,
    pub owner: String,
}

#[derive(Clone)]
pub struct Compute(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) kms: Kms,
    pub(crate) cfg: ComputeConfig,
    /// This server's node (its embedded agent runs the VMs placed on it).
    pub(crate) node: OnceLock<String>,
    /// The id of the compute directory (see [`read_compute_id`]).
    pub(crate) compute_id: String,
    /// The VMs of that node.
    pub(crate) host: Host,
    /// Counts what tenants change on instances and volumes, so agents of
    /// nodes of their own can wait for a change instead of polling fast.
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    pub(crate) spares: Spares,
}

/// The file naming a compute directory, so that a node of its own can
/// prove it mounted the control plane's.
const COMPUTE_ID_FILE: &str = "compute-id";

/// The id of compute directory `dir`, made on first use.
fn ensure_compute_id(dir: &Path) -> std::io::Result<String> {
    let file = dir.join(COMPUTE_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("cmp_{}", uuid::Uuid::new_v4().simple());
    let tmp = dir.join(format!("{COMPUTE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    Ok(id)
}

/// The id of compute directory `dir`, as an agent finds it there.
pub fn read_compute_id(dir: &Path) -> ApiResult<String> {
    let file = dir.join(COMPUTE_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ApiError::bad_request(
            "compute_dir_not_shared",
            format!(
                "{} holds no compute id: mount the control plane's compute directory \
                 (shared storage) there",
                dir.display()
            ),
        )),
    }
}

pub(crate) fn io_err(what: &str) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

pub(crate) fn qemu_err(e: nuage_qemu::Error) -> ApiError {
    ApiError::internal(format!("disk operation failed: {e}"))
}

impl Compute {
    /// Opens the service, creating its directories (0700) and removing
    /// upload spools a crash left (nobody holds their keys any more).
    pub fn open(store: Store, kms: Kms, cfg: ComputeConfig) -> std::io::Result<Compute> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["images", "volumes", "spool", "run", "vm"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(cfg.dir.join(sub))?;
        }
        for e in std::fs::read_dir(cfg.dir.join("spool"))? {
            let p = e?.path();
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        let spares = Spares::open(cfg.dir.join("spares"), cfg.spare_disks)?;
        let host = Host::new(&cfg)?;
        let compute_id = ensure_compute_id(&cfg.dir)?;
        Ok(Compute(Arc::new(Inner {
            store,
            kms,
            spares,
            cfg,
            node: OnceLock::new(),
            compute_id,
            host,
            // From the clock, so an agent's last generation from before a
            // restart does not match by chance.
            changes: tokio::sync::watch::Sender::new(now_ms().unsigned_abs()),
        })))
    }

    /// Makes this server the compute node `node_id` (its agent runs the
    /// instances placed there) with accelerator `accel`.
    pub fn set_local_node(&self, node_id: &str, accel: nuage_qemu::Accel) {
        let _ = self.0.node.set(node_id.to_string());
        self.0.host.set_accel(accel);
    }

    pub fn local_node(&self) -> Option<&str> {
        self.0.node.get().map(String::as_str)
    }

    /// The id nodes of their own must find in their compute directory.
    pub fn compute_id(&self) -> &str {
        &self.0.compute_id
    }

    /// The VMs of this server's own node.
    pub fn host(&self) -> &Host {
        &self.0.host
    }

    /// Asks the embedded agent for a reconcile pass now (a node of its own
    /// looks every few seconds).
    pub fn wake_agent(&self) {
        self.0.host.wake.notify_one();
        self.0.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether instance `i` is placed on this server's own node.
    pub fn is_local(&self, i: &InstanceRow) -> bool {
        i.node_id.is_some() && i.node_id.as_deref() == self.local_node()
    }

    /// Instance `i` runs on this server's own node, or a 409 saying that
    /// `what` needs it to (QMP and the console are local to a node).
    pub(crate) fn on_local_node(&self, i: &InstanceRow, what: &str) -> ApiResult<()> {
        if self.is_local(i) {
            return Ok(());
        }
        Err(ApiError::conflict(
            "instance_on_remote_node",
            format!("instance {} runs on a node of its own: {what}", i.name),
        ))
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.0.cfg.dir.join(rel)
    }

    pub(crate) async fn disk_key(
        &self,
        project_id: &str,
        dek_id: &str,
        owner: &str,
        why: &Purpose,
    ) -> ApiResult<(DiskKey, KeyUse)> {
        let (key, used) = self.0.kms.unwrap(project_id, dek_id, owner, why).await?;
        let dk = DiskKey::from_data_key(key.expose()).map_err(qemu_err)?;
        Ok((dk, used))
    }

    /// The chain QEMU opens for `layers`, each file with its key.
    pub async fn chain(
        &self,
        layers: &[LayerRef],
        why: &Purpose,
    ) -> ApiResult<(Chain, Vec<KeyUse>)> {
        let mut out = Vec::with_capacity(layers.len());
        let mut uses = Vec::with_capacity(layers.len());
        for l in layers {
            let (key, used) = self
                .disk_key(&l.project_id, &l.data_key_id, &l.owner, why)
                .await?;
            out.push(Layer::new(self.path(&l.file), key));
            uses.push(used);
        }
        let chain = Chain::new(out).map_err(qemu_err)?;
        Ok((chain, uses))
    }

    // ---- images ---------------------------------------------------------------

    /// Records a new image waiting for its file.
    pub async fn image_create(
        &self,
        project: &Project,
        body: &CreateImage,
        created_by: &str,
        why: &Purpose,
    ) -> ApiResult<(ImageRow, KeyUse)> {
        name::validate("image", &body.name)?;
        let key = self.0.kms.default_key(project).await?;
        let id = new_id(Kind::Project).replacen("prj_", "img_", 1);
        let (dk, used, dek_row) = self
            .0
            .kms
            .data_key_unsaved(&project.id, &key.name, &id, why)
            .await?;
        let now = now_ms();
        let row = ImageRow {
            id,
            org_id: project.org_id.clone(),
            project_id: project.id.clone(),
            name: body.name.clone(),
            visibility: body.visibility.as_str().to_string(),
            source_format: String::new(),
            virtual_size: 0,
            key_id: key.id.clone(),
            data_key_id: dk.id.clone(),
            state: "uploading".into(),
            status_message: "waiting for the image file".into(),
            created_by: created_by.to_string(),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        self.0.store.image_create(&dek_row, &row).await?;
        Ok((row, used))
    }

    /// Receives the image's file: spools it sealed, inspects it and imports
    /// it as an encrypted qcow2. A refused file leaves the image `failed`
    /// with the reason (a new upload may follow); nothing else changes.
    pub async fn image_upload<S, E>(
        &self,
        image: &ImageRow,
        body: S,
        why: &Purpose,
    ) -> ApiResult<(ImageRow, KeyUse)>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if image.state == "available" {
            return Err(ApiError::conflict(
                "image_available",
                "the image already has its file; create a new image instead",
            ));
        }
        let (key, used) = self
            .disk_key(&image.project_id, &image.data_key_id, &image.id, why)
            .await?;
        let spool_path =
            self.path("spool")
                .join(format!("{}-{}", image.id, uuid::Uuid::new_v4().simple()));
        let spool = Spool::receive(spool_path, body, self.0.cfg.max_image_bytes, |_| {})
            .await
            .map_err(|e| match e {
                SpoolError::TooLarge(max) => ApiError::bad_request(
                    "image_too_large",
                    format!("the image is larger than the limit of {max} bytes"),
                ),
                SpoolError::Empty => ApiError::bad_request("empty_image", "the upload is empty"),
                SpoolError::Body(m) => {
                    ApiError::bad_request("upload_interrupted", format!("the upload failed: {m}"))
                }
                other => ApiError::internal(other.to_string()),
            })?;
        let verdict = self.import(image, &spool, &key).await;
        drop(spool);
        match verdict {
            Ok(report) => {
                self.0
                    .store
                    .image_set_state(
                        &image.id,
                        "available",
                        "",
                        report.format.as_str(),
                        i64::try_from(report.virtual_size).unwrap_or(i64::MAX),
                    )
                    .await?;
                // VMs are coming: have disks ready for them.
                self.0.spares.wake();
            }
            Err(e) => {
                self.0
                    .store
                    .image_set_state(&image.id, "failed", &e.detail, "", 0)
                    .await?;
                return Err(e);
            }
        }
        let row = self
            .0
            .store
            .image_get(&image.project_id, &image.id)
            .await?
            .ok_or_else(|| ApiError::not_found("image", &image.name))?;
        Ok((row, used))
    }

    async fn import(
        &self,
        image: &ImageRow,
        spool: &Spool,
        key: &DiskKey,
    ) -> ApiResult<nuage_qemu::image::ImageReport> {
        let export = spool
            .export(&self.path("run"))
            .map_err(io_err("export the upload"))?;
        let mut head = Vec::new();
        {
            use std::io::Read;
            let reader = spool.reader().map_err(io_err("read the upload"))?;
            reader
                .take(nuage_qemu::image::HEAD as u64)
                .read_to_end(&mut head)
                .map_err(io_err("read the upload"))?;
        }
        let source = Source::Nbd {
            socket: export.socket().to_path_buf(),
            export: export.name().to_string(),
        };
        let report = nuage_qemu::image::inspect_source(&source, &head, spool.len())
            .await
            .map_err(|e| ApiError::bad_request(image_error_code(&e), e.to_string()))?;
        let dest = self.path(&image_file(&image.id));
        let _ = std::fs::remove_file(&dest);
        nuage_qemu::disk::import_source(&source, report.format, &dest, key)
            .await
            .map_err(|e| {
                let _ = std::fs::remove_file(&dest);
                qemu_err(e)
            })?;
        drop(export);
        Ok(report)
    }

    /// Deletes an image that no volume or snapshot uses, with its file and
    /// data key.
    pub async fn image_delete(&self, image: &ImageRow) -> ApiResult<()> {
        let users = self
            .0
            .store
            .layers_referencing(&image_file(&image.id))
            .await?;
        if users > 0 {
            return Err(ApiError::conflict(
                "image_in_use",
                format!(
                    "the image is the base of {users} volume(s) or snapshot(s); delete them first"
                ),
            ));
        }
        self.0.store.image_delete(&image.id).await?;
        let _ = std::fs::remove_file(self.path(&image_file(&image.id)));
        self.0.kms.data_key_delete(&image.data_key_id).await
    }

    pub async fn image_set_visibility(&self, image: &ImageRow, v: Visibility) -> ApiResult<()> {
        self.0
            .store
            .image_set_visibility(&image.id, v.as_str())
            .await
    }

    // ---- volumes --------------------------------------------------------------

    /// Creates a volume, blank or as a copy-on-write overlay of an image.
    pub async fn volume_create(
        &self,
        project: &Project,
        body: &CreateVolume,
        created_by: &str,
        why: &Purpose,
    ) -> ApiResult<(VolumeRow, Vec<KeyUse>)> {
        name::validate("volume", &body.name)?;
        let requested = body.size.as_deref().map(parse_size).transpose()?;
        if body.image.is_some() && body.snapshot.is_some() {
            return Err(ApiError::bad_request(
                "invalid_source",
                "a volume starts from an image or from a snapshot, not both",
            ));
        }
        let snapshot = match &body.snapshot {
            Some(sn) => Some(
                self.0
                    .store
                    .snapshot_get(&project.id, sn)
                    .await?
                    .ok_or_else(|| ApiError::not_found("snapshot", sn))?,
            ),
            None => None,
        };
        let image = match &body.image {
            Some(i) => Some(
                self.0
                    .store
                    .image_usable(&project.org_id, &project.id, i)
                    .await?
                    .ok_or_else(|| ApiError::not_found("image", i))?,
            ),
            None => None,
        };
        if let Some(img) = &image {
            if img.state != "available" {
                return Err(ApiError::conflict(
                    "image_not_available",
                    format!("image {} is {}, not available", img.name, img.state),
                ));
            }
        }
        let base = match (&image, &snapshot) {
            (Some(i), _) => u64::try_from(i.virtual_size).unwrap_or(0),
            (_, Some(sn)) => u64::try_from(sn.size_bytes).unwrap_or(0),
            _ => 0,
        };
        let size = match (requested, base) {
            (Some(s), b) if s < b => {
                return Err(ApiError::bad_request(
                    "volume_too_small",
                    format!("the volume must hold its source: at least {b} bytes"),
                ))
            }
            (Some(s), _) => s,
            (None, 0) => {
                return Err(ApiError::bad_request(
                    "size_required",
                    "a blank volume needs a size",
                ))
            }
            (None, b) => b,
        };
        let key = self.0.kms.default_key(project).await?;
        let id = new_id(Kind::Project).replacen("prj_", "vol_", 1);
        let spare = self.0.spares.take();
        let (dk, used, dek_row) = self
            .new_disk_key(project, &key.name, &id, why, &spare)
            .await?;
        let mut layers = vec![LayerRef {
            file: volume_file(&id),
            data_key_id: dk.id.clone(),
            project_id: project.id.clone(),
            owner: id.clone(),
        }];
        if let Some(img) = &image {
            layers.push(LayerRef {
                file: image_file(&img.id),
                data_key_id: img.data_key_id.clone(),
                project_id: img.project_id.clone(),
                owner: img.id.clone(),
            });
        }
        if let Some(sn) = &snapshot {
            layers.extend(crate::snapshots::layers_of(&sn.layers)?);
        }
        let layers_json = serde_json::to_string(&layers)
            .map_err(|e| ApiError::internal(format!("layers do not encode: {e}")))?;
        let now = now_ms();
        let size_bytes = i64::try_from(size).map_err(|_| ApiError::invalid("size too large"))?;
        let row = VolumeRow {
            id: id.clone(),
            org_id: project.org_id.clone(),
            project_id: project.id.clone(),
            name: body.name.clone(),
            size_bytes,
            source_image_id: image.as_ref().map(|i| i.id.clone()),
            source_snapshot_id: snapshot.as_ref().map(|s| s.id.clone()),
            key_id: key.id.clone(),
            data_key_id: dk.id.clone(),
            layers: layers_json.clone(),
            instance_id: None,
            state: "creating".into(),
            status_message: String::new(),
            created_by: created_by.to_string(),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        self.0.store.volume_create(&dek_row, &row).await?;
        let disk_key = DiskKey::from_data_key(dk.key.expose()).map_err(qemu_err)?;
        let file = self.path(&volume_file(&id));
        let backing = layers.get(1).map(|b| self.path(&b.file));
        let made = self
            .make_disk(spare, &file, backing.as_deref(), size, &disk_key)
            .await;
        let (state, message) = match &made {
            Ok(()) => ("available", String::new()),
            Err(e) => ("failed", format!("the disk could not be created: {e}")),
        };
        self.0
            .store
            .volume_set_state(&id, state, &message, &layers_json, size_bytes)
            .await?;
        made.map_err(qemu_err)?;
        let row = self
            .0
            .store
            .volume_get(&project.id, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", &body.name))?;
        Ok((row, vec![used]))
    }

    /// The data key of a new disk `owner`: the spare's key when there is a
    /// spare for it, else a fresh one.
    pub(crate) async fn new_disk_key(
        &self,
        project: &Project,
        key: &str,
        owner: &str,
        why: &Purpose,
        spare: &Option<Spare>,
    ) -> ApiResult<(nuage_kms::DataKey, KeyUse, nuage_store::DataKeyRow)> {
        let kms = &self.0.kms;
        match spare {
            Some(s) => {
                kms.data_key_unsaved_from(&project.id, key, owner, why, s.key().clone())
                    .await
            }
            None => kms.data_key_unsaved(&project.id, key, owner, why).await,
        }
    }

    /// Makes the encrypted disk `dest` (an overlay of `backing` if given)
    /// of `size` bytes under `key`: from `spare` when there is one (whose
    /// key `key` is), the slow way otherwise or if that fails.
    pub(crate) async fn make_disk(
        &self,
        spare: Option<Spare>,
        dest: &Path,
        backing: Option<&Path>,
        size: u64,
        key: &DiskKey,
    ) -> nuage_qemu::Result<()> {
        if let Some(s) = spare {
            match s.adopt(dest, backing, size).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "a spare disk could not be adopted"),
            }
        }
        match backing {
            Some(b) => nuage_qemu::disk::create_overlay(dest, b, size, key).await,
            None => nuage_qemu::disk::create(dest, size, key).await,
        }
    }

    /// Deletes a detached volume with the files and data key no snapshot
    /// or other volume still needs.
    pub async fn volume_delete(&self, v: &VolumeRow) -> ApiResult<()> {
        self.0.store.volume_delete(&v.id).await?;
        self.release(&crate::snapshots::layers_of(&v.layers)?).await
    }
}

pub(crate) fn image_file(id: &str) -> String {
    format!("images/{id}.qcow2")
}

pub(crate) fn volume_file(id: &str) -> String {
    format!("volumes/{id}.qcow2")
}

fn image_error_code(e: &nuage_qemu::ImageError) -> &'static str {
    use nuage_qemu::ImageError as E;
    match e {
        E::BackingFile => "image_has_backing_file",
        E::ExternalDataFile => "image_has_data_file",
        E::Encrypted => "image_encrypted",
        E::UnsupportedFormat(_) => "unsupported_image_format",
        E::NotAnImage(_) => "not_an_image",
        E::Corrupt(_) => "corrupt_image",
        E::Empty => "empty_image",
        _ => "invalid_image",
    }
}
