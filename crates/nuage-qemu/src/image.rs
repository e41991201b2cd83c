//! Inspection of an uploaded (untrusted) image before nuage imports it.
//!
//! The format is decided from the file's own bytes, never by letting
//! qemu-img probe: probing opens whatever the header asks for (a vmdk
//! descriptor names extent files, a qcow2 a backing or data file), so a
//! crafted upload could make QEMU read host files. Rules:
//!
//! - qcow2 (magic `QFI\xfb`, version 2 or 3): refused if its header names a
//!   backing file or an external data file, or is encrypted; then
//!   `qemu-img info -f qcow2` and `qemu-img check` (leaked clusters are
//!   harmless and accepted; corruptions are refused).
//! - Other image formats we recognise (vmdk, vhd, vhdx, vdi, qed, LUKS,
//!   qcow v1 …) are refused as unsupported.
//! - Anything else is a raw disk only if its size is a non-zero multiple of
//!   512 and it carries a partition table or filesystem signature: the
//!   boot-sector mark 0x55AA at 510 (MBR, the protective MBR of GPT, FAT,
//!   NTFS), ext2/3/4, XFS, btrfs, ISO 9660, LVM2 or squashfs. A file with
//!   none of these is junk, not a disk ([`ImageError::NotAnImage`]).
//!
//! qemu-img runs with a timeout, a 1 GiB address-space and a 20 s CPU limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::disk::{ImageFormat, QEMU_IMG};
use crate::error::{Error, ImageError};
use crate::tool::{Limits, Tool};

const LIMITS: Limits = Limits {
    address_space: 1 << 30,
    cpu_seconds: 20,
};
const TIMEOUT: Duration = Duration::from_secs(60);
/// Enough to see every signature we look for (btrfs is at 64 KiB + 64).
pub const HEAD: usize = 68 * 1024;

/// What an accepted upload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    pub format: ImageFormat,
    /// The size of the disk the image describes (bytes).
    pub virtual_size: u64,
    /// The size of the uploaded file (bytes).
    pub file_size: u64,
}

/// Decides whether the uploaded file at `path` is an image nuage accepts.
pub async fn inspect(path: &Path) -> Result<ImageReport, ImageError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| ImageError::Unreadable(format!("{}: {e}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(ImageError::NotAnImage("not a regular file".into()));
    }
    let file_size = meta.len();
    if file_size == 0 {
        return Err(ImageError::Empty);
    }
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(path)
        .and_then(|f| f.take(HEAD as u64).read_to_end(&mut head))
        .map_err(|e| ImageError::Unreadable(format!("{}: {e}", path.display())))?;

    inspect_source(&Source::File(path.to_path_buf()), &head, file_size).await
}

/// Where an upload is read from: a file, or an NBD export (an upload
/// spool that only the export can decrypt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Nbd { socket: PathBuf, export: String },
}

impl Source {
    /// The protocol node under the format driver.
    pub(crate) fn protocol_node(&self) -> Value {
        match self {
            Source::File(p) => json!({"driver": "file", "filename": p.to_string_lossy()}),
            Source::Nbd { socket, export } => json!({
                "driver": "nbd",
                "server": {"type": "unix", "path": socket.to_string_lossy()},
                "export": export,
            }),
        }
    }

    /// The JSON options that open the source as `format` and nothing else.
    pub(crate) fn open_as(&self, format: ImageFormat) -> String {
        let mut v = json!({"driver": format.as_str(), "file": self.protocol_node()});
        if format == ImageFormat::Qcow2 {
            v["backing"] = Value::Null;
        }
        format!("json:{v}")
    }
}

/// [`inspect`] of any source, given its first [`HEAD`] bytes and size.
pub async fn inspect_source(
    src: &Source,
    head: &[u8],
    file_size: u64,
) -> Result<ImageReport, ImageError> {
    if file_size == 0 {
        return Err(ImageError::Empty);
    }
    let format = classify(head, file_size)?;
    let info = qemu_img_info(src, format).await?;
    if info["format"].as_str() != Some(format.as_str()) {
        return Err(ImageError::Unreadable(format!(
            "qemu-img saw {} where {} was expected",
            info["format"],
            format.as_str()
        )));
    }
    if info.get("backing-filename").is_some() {
        return Err(ImageError::BackingFile);
    }
    if info["format-specific"]["data"].get("data-file").is_some() {
        return Err(ImageError::ExternalDataFile);
    }
    if info["encrypted"].as_bool() == Some(true) {
        return Err(ImageError::Encrypted);
    }
    let virtual_size = info["virtual-size"]
        .as_u64()
        .ok_or_else(|| ImageError::Unreadable("qemu-img gave no virtual size".into()))?;
    if format == ImageFormat::Qcow2 {
        check_qcow2(src).await?;
    }
    Ok(ImageReport {
        format,
        virtual_size,
        file_size,
    })
}

/// The format of a file from its first bytes (see module docs).
pub fn classify(head: &[u8], file_size: u64) -> Result<ImageFormat, ImageError> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let be32 = |off: usize| {
        head.get(off..off + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be64 = |off: usize| {
        head.get(off..off + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    };

    if at(0, b"QFI\xfb") {
        let version = be32(4).unwrap_or(0);
        if version != 2 && version != 3 {
            return Err(ImageError::UnsupportedFormat(format!(
                "qcow version {version}"
            )));
        }
        if be64(8).unwrap_or(0) != 0 {
            return Err(ImageError::BackingFile);
        }
        if be32(32).unwrap_or(0) != 0 {
            return Err(ImageError::Encrypted);
        }
        // Version 3: incompatible feature bit 2 is "external data file".
        if version == 3 && be64(72).unwrap_or(0) & (1 << 2) != 0 {
            return Err(ImageError::ExternalDataFile);
        }
        return Ok(ImageFormat::Qcow2);
    }

    let others: [(usize, &[u8], &str); 11] = [
        (0, b"KDMV", "vmdk"),
        (0, b"COWD", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk"),
        (0, b"conectix", "vpc"),
        (0, b"vhdxfile", "vhdx"),
        (0x40, b"\x7f\x10\xda\xbe", "vdi"),
        (0, b"QED\0", "qed"),
        (0, b"LUKS\xba\xbe", "luks"),
        (0, b"Bochs Virtual HD Image", "bochs"),
        (0, b"WithoutFreeSpace", "parallels"),
        (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
    ];
    if let Some((_, _, name)) = others.iter().find(|(off, m, _)| at(*off, m)) {
        return Err(ImageError::UnsupportedFormat((*name).to_string()));
    }
    if at(0, b"WithouFreSpacExt") {
        return Err(ImageError::UnsupportedFormat("parallels".into()));
    }

    if file_size % 512 != 0 {
        return Err(ImageError::NotAnImage(format!(
            "a raw disk is a whole number of 512-byte sectors; {file_size} bytes is not"
        )));
    }
    let signatures: [(usize, &[u8]); 8] = [
        (510, b"\x55\xaa"),     // MBR, GPT's protective MBR, FAT, NTFS
        (1080, b"\x53\xef"),    // ext2/3/4
        (0, b"XFSB"),           // XFS
        (0x10040, b"_BHRfS_M"), // btrfs
        (0x8001, b"CD001"),     // ISO 9660
        (512, b"LABELONE"),     // LVM2
        (0, b"hsqs"),           // squashfs
        (0x200, b"EFI PART"),   // GPT header (if the protective MBR is gone)
    ];
    if signatures.iter().any(|(off, m)| at(*off, m)) {
        return Ok(ImageFormat::Raw);
    }
    Err(ImageError::NotAnImage(
        "no partition table or filesystem signature found".into(),
    ))
}

async fn qemu_img_info(src: &Source, format: ImageFormat) -> Result<Value, ImageError> {
    let mut t = Tool::new(QEMU_IMG, TIMEOUT);
    t.limits(LIMITS)
        .args(["info", "--output=json"])
        .arg(src.open_as(format));
    let out = t.run().await.map_err(unreadable)?;
    if !out.status.success() {
        let err = unreadable(t.failure(&out));
        return Err(match (format, err) {
            (ImageFormat::Qcow2, ImageError::Unreadable(m)) => ImageError::Corrupt(m),
            (_, e) => e,
        });
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| ImageError::Unreadable(format!("qemu-img info output: {e}")))
}

async fn check_qcow2(src: &Source) -> Result<(), ImageError> {
    let mut t = Tool::new(QEMU_IMG, TIMEOUT);
    t.limits(LIMITS)
        .args(["check", "--output=json"])
        .arg(src.open_as(ImageFormat::Qcow2));
    let out = t.run().await.map_err(unreadable)?;
    match out.status.code() {
        // 0: clean; 3: only leaked clusters (wasted space, no harm).
        Some(0) | Some(3) => Ok(()),
        Some(2) => {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            Err(ImageError::Corrupt(format!(
                "{} corruption(s) found by qemu-img check",
                v["corruptions"].as_u64().unwrap_or(0)
            )))
        }
        _ => match unreadable(t.failure(&out)) {
            ImageError::Unreadable(m) => Err(ImageError::Corrupt(m)),
            e => Err(e),
        },
    }
}

fn unreadable(e: Error) -> ImageError {
    match e {
        Error::Tool { stderr, .. } => ImageError::Unreadable(
            stderr
                .strip_prefix("qemu-img: ")
                .unwrap_or(&stderr)
                .to_string(),
        ),
        other => ImageError::Unreadable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_bytes() {
        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(classify(&mbr, 1024), Ok(ImageFormat::Raw));
        assert!(matches!(
            classify(&mbr, 1000),
            Err(ImageError::NotAnImage(_))
        ));
        assert!(matches!(
            classify(&[0u8; 1024], 1024),
            Err(ImageError::NotAnImage(_))
        ));
        assert_eq!(
            classify(b"KDMV....", 512),
            Err(ImageError::UnsupportedFormat("vmdk".into()))
        );
        let mut q = vec![0u8; 512];
        q[..4].copy_from_slice(b"QFI\xfb");
        q[7] = 3;
        assert_eq!(classify(&q, 512), Ok(ImageFormat::Qcow2));
        q[15] = 0x70; // backing_file_offset
        assert_eq!(classify(&q, 512), Err(ImageError::BackingFile));
        q[15] = 0;
        q[79] = 4; // incompatible feature: external data file
        assert_eq!(classify(&q, 512), Err(ImageError::ExternalDataFile));
    }
}
