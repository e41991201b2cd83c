//! Encrypted qcow2 files on the host, made and changed with `qemu-img`
//! while no VM has them open: create, overlay, import, resize, inspect,
//! exact copy.
//!
//! Every key goes to qemu-img through an inherited memfd (see
//! [`crate::tool`]); chains are opened with the JSON of
//! [`Chain::blockdev`], one secret per layer.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::chain::{check_path, Chain};
use crate::error::{Error, Result};
use crate::image::Source;
use crate::key::{DiskKey, LUKS_ITER_TIME_MS};
use crate::tool::Tool;

/// The qemu-img program (from `PATH`).
pub const QEMU_IMG: &str = "qemu-img";

/// Metadata operations (create, info, resize) finish in well under this.
const META_TIMEOUT: Duration = Duration::from_secs(120);
/// Copies (import, exact snapshot) of large images take longer.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Source formats accepted for an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// What `qemu-img info` says about a disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: Option<u64>,
    pub encrypted: bool,
    pub backing_filename: Option<String>,
    /// The whole `qemu-img info --output=json` document.
    pub json: Value,
}

impl DiskInfo {
    pub(crate) fn parse(stdout: &[u8]) -> Result<Self> {
        let json: Value = serde_json::from_slice(stdout)
            .map_err(|e| Error::Protocol(format!("qemu-img info output is not JSON: {e}")))?;
        let virtual_size = json["virtual-size"]
            .as_u64()
            .ok_or_else(|| Error::Protocol("qemu-img info gave no virtual-size".into()))?;
        Ok(DiskInfo {
            format: json["format"].as_str().unwrap_or_default().to_string(),
            virtual_size,
            actual_size: json["actual-size"].as_u64(),
            encrypted: json["encrypted"].as_bool().unwrap_or(false),
            backing_filename: json["backing-filename"].as_str().map(str::to_string),
            json,
        })
    }
}

/// The `-o` creation options of an encrypted qcow2 whose key is `secret`.
fn encrypt_opts(secret: &str) -> String {
    format!("encrypt.format=luks,encrypt.key-secret={secret},encrypt.iter-time={LUKS_ITER_TIME_MS}")
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || size % 512 != 0 {
        return Err(Error::invalid(
            "size",
            format!("{size} bytes: must be a positive multiple of 512"),
        ));
    }
    Ok(())
}

fn check_new(path: &Path) -> Result<()> {
    check_path(path)?;
    if path.exists() {
        return Err(Error::invalid(
            "path",
            format!("{} already exists", path.display()),
        ));
    }
    Ok(())
}

/// Adds one `--object secret` per layer of `chain` (after the subcommand:
/// qemu-img takes options only there) and returns the chain's `json:`
/// filename.
fn open_chain(tool: &mut Tool, chain: &Chain) -> Result<String> {
    for (i, layer) in chain.layers().iter().enumerate() {
        let obj = tool.key_fd(&Chain::secret_id("c", i), &layer.key)?;
        tool.arg("--object").arg(obj);
    }
    Ok(chain.json_filename("c"))
}

/// CPU niceness of the commands that create disks: their LUKS PBKDF
/// benchmark and copies are bulk work that must not starve the control
/// plane's API (the default niceness of VMs, too).
pub const DISK_WORK_NICE: i32 = 10;

/// CPU niceness of spares, made ahead of need: only when the CPU is idle.
pub const SPARE_NICE: i32 = 15;

/// Attempts of a disk creation whose LUKS benchmark keeps misreading.
const MISREAD_ATTEMPTS: u64 = 30;

/// Runs a qemu-img command that creates the encrypted file `dest` (which
/// did not exist), removing it if the command fails. QEMU 7.2 times its
/// LUKS PBKDF benchmark with getrusage(); where CPU time is accounted in
/// coarse ticks the measure can read 0 ms and qemu-img fails with "Unable
/// to get accurate CPU usage" (about half the time on the test machines,
/// whatever `encrypt.iter-time`): that one error is retried.
async fn creating(dest: &Path, build: impl Fn() -> Result<Tool>) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tool = build()?;
        tool.nice_at_least(DISK_WORK_NICE);
        let result = tool.run_ok(&[0]).await;
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        match result {
            Err(Error::Tool { stderr, .. })
                if attempt < MISREAD_ATTEMPTS
                    && stderr.contains("Unable to get accurate CPU usage") =>
            {
                tracing::debug!("qemu-img LUKS benchmark misread the CPU time; retrying");
                // Under heavy CPU contention the misreads come in runs: the
                // next attempt lands on other scheduler ticks.
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            other => return other.map(|_| ()),
        }
    }
}

/// Creates an empty encrypted qcow2 of `size` bytes.
pub async fn create(path: &Path, size: u64, key: &DiskKey) -> Result<()> {
    check_size(size)?;
    create_blank(path, size, key, DISK_WORK_NICE).await
}

async fn create_blank(path: &Path, size: u64, key: &DiskKey, nice: i32) -> Result<()> {
    check_new(path)?;
    creating(path, || {
        let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
        let obj = t.key_fd("new", key)?;
        t.nice(nice)
            .args(["create", "-q", "-f", "qcow2", "--object"])
            .arg(obj)
            .arg("-o")
            .arg(encrypt_opts("new"))
            .arg(path)
            .arg(size.to_string());
        Ok(t)
    })
    .await
}

/// Creates an encrypted qcow2 overlay of `size` bytes on `backing` (a
/// qcow2). With `-u` the backing file is not opened, so its key is not
/// needed here; the overlay has its own `key`.
pub async fn create_overlay(path: &Path, backing: &Path, size: u64, key: &DiskKey) -> Result<()> {
    check_new(path)?;
    check_path(backing)?;
    check_size(size)?;
    creating(path, || {
        let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
        let obj = t.key_fd("new", key)?;
        t.args(["create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b"])
            .arg(backing)
            .arg("--object")
            .arg(obj)
            .arg("-o")
            .arg(encrypt_opts("new"))
            .arg(path)
            .arg(size.to_string());
        Ok(t)
    })
    .await
}

/// The virtual size of a spare disk: the smallest qcow2 holds, grown to
/// the volume's size when [`adopt`] gives it its place.
pub const SPARE_SIZE: u64 = 512;

/// Creates a spare: an empty encrypted qcow2 made ahead of need, at low
/// CPU priority. Making an encrypted qcow2 costs QEMU's LUKS PBKDF
/// benchmark (over a second of CPU, whatever `iter-time`); [`adopt`] then
/// turns the spare into a volume in milliseconds.
pub async fn create_spare(path: &Path, key: &DiskKey) -> Result<()> {
    create_blank(path, SPARE_SIZE, key, SPARE_NICE).await
}

/// Makes the spare `spare` (encrypted with `key`, see [`create_spare`])
/// the disk `dest`: grown to `size` bytes, then pointed at `backing` (a
/// qcow2) if given, then renamed into place, so `dest` appears only
/// whole. It is grown before it has a backing file: growing an overlay
/// would zero the new area instead of showing the backing file's data.
/// The result is what [`create`] or [`create_overlay`] would have made
/// with the same key.
pub async fn adopt(
    spare: &Path,
    dest: &Path,
    backing: Option<&Path>,
    size: u64,
    key: &DiskKey,
) -> Result<()> {
    check_path(spare)?;
    check_new(dest)?;
    check_size(size)?;
    if let Some(b) = backing {
        check_path(b)?;
    }
    // A single layer opens with `backing: null`, so qemu-img never looks
    // for the backing file while it rebases.
    let name = Chain::single(spare, key.clone())?.json_filename("c");
    if size > SPARE_SIZE {
        let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
        let obj = t.key_fd(&Chain::secret_id("c", 0), key)?;
        t.args(["resize", "-q", "--object"])
            .arg(obj)
            .arg(&name)
            .arg(size.to_string());
        t.run_ok(&[0]).await?;
    }
    if let Some(b) = backing {
        let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
        let obj = t.key_fd(&Chain::secret_id("c", 0), key)?;
        t.args(["rebase", "-q", "-u", "-F", "qcow2", "-b"])
            .arg(b)
            .arg("--object")
            .arg(obj)
            .arg(&name);
        t.run_ok(&[0]).await?;
    }
    std::fs::rename(spare, dest)
        .map_err(|e| Error::io(format!("rename {} into place", spare.display()), e))
}

/// Converts an uploaded image (already checked by
/// [`crate::image::inspect`]) into a standalone encrypted qcow2. The
/// source is opened with an explicit driver and, for qcow2, `backing: null`.
pub async fn import(src: &Path, format: ImageFormat, dest: &Path, key: &DiskKey) -> Result<()> {
    check_path(src)?;
    import_source(&Source::File(src.to_path_buf()), format, dest, key).await
}

/// [`import`] from any source (an NBD export of an upload spool, say).
pub async fn import_source(
    src: &Source,
    format: ImageFormat,
    dest: &Path,
    key: &DiskKey,
) -> Result<()> {
    check_new(dest)?;
    let source = src.open_as(format);
    creating(dest, || {
        let mut t = Tool::new(QEMU_IMG, COPY_TIMEOUT);
        let obj = t.key_fd("new", key)?;
        t.args(["convert", "-q", "-O", "qcow2", "--object"])
            .arg(obj)
            .arg("-o")
            .arg(encrypt_opts("new"))
            .arg(&source)
            .arg(dest);
        Ok(t)
    })
    .await
}

/// An exact, standalone copy of a stopped disk (its whole chain flattened)
/// into `dest`, encrypted with `key`.
pub async fn snapshot_stopped(src: &Chain, dest: &Path, key: &DiskKey) -> Result<()> {
    check_new(dest)?;
    creating(dest, || {
        let mut t = Tool::new(QEMU_IMG, COPY_TIMEOUT);
        t.args(["convert", "-q", "-O", "qcow2"]);
        let source = open_chain(&mut t, src)?;
        let obj = t.key_fd("new", key)?;
        t.arg("--object")
            .arg(obj)
            .arg("-o")
            .arg(encrypt_opts("new"))
            .arg(source)
            .arg(dest);
        Ok(t)
    })
    .await
}

/// `qemu-img info` of a chain's top, opened with its key.
pub async fn info(chain: &Chain) -> Result<DiskInfo> {
    let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
    // qemu-img info opens no backing file (and refuses backing options),
    // so only the top layer and its key.
    let top = Chain::single(&chain.top().path, chain.top().key.clone())?;
    let mut name = top.blockdev("c", false);
    if let Some(o) = name.as_object_mut() {
        o.remove("backing");
    }
    let obj = t.key_fd("c.k0", &chain.top().key)?;
    t.args(["info", "--output=json", "--object"])
        .arg(obj)
        .arg(format!("json:{name}"));
    let out = t.run_ok(&[0]).await?;
    DiskInfo::parse(&out.stdout)
}

/// `qemu-img info` of one qcow2 file without its key (header facts only:
/// size, encryption, backing file name). `-U` lets it look at a file a
/// running VM holds.
pub async fn info_header(path: &Path) -> Result<DiskInfo> {
    check_path(path)?;
    let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
    t.args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(path);
    let out = t.run_ok(&[0]).await?;
    DiskInfo::parse(&out.stdout)
}

/// Grows a stopped disk (its top layer) to `new_size` bytes; shrinking is
/// refused with [`Error::Shrink`], the same size is a no-op.
pub async fn resize(chain: &Chain, new_size: u64) -> Result<()> {
    check_size(new_size)?;
    let current = info(chain).await?.virtual_size;
    if new_size < current {
        return Err(Error::Shrink {
            current,
            requested: new_size,
        });
    }
    if new_size == current {
        return Ok(());
    }
    let mut t = Tool::new(QEMU_IMG, META_TIMEOUT);
    t.args(["resize", "-q"]);
    let name = open_chain(&mut t, chain)?;
    t.arg(name).arg(new_size.to_string());
    t.run_ok(&[0]).await?;
    Ok(())
}
