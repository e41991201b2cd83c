//! Compute resources as the REST API shows them, and the bodies that create
//! or change them.

use nuage_core::ApiError;
use nuage_store::{ImageRow, VolumeRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who may use an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only its own project.
    #[default]
    Project,
    /// Every project of the organization (by id).
    Org,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Project => "project",
            Visibility::Org => "org",
        }
    }

    pub fn parse(s: &str) -> Visibility {
        if s == "org" {
            Visibility::Org
        } else {
            Visibility::Project
        }
    }
}

/// A disk image: a template volumes and instances start from. Stored as an
/// encrypted qcow2 under a data key of the project key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub visibility: Visibility,
    /// `uploading` (waiting for its file), `available` or `failed`.
    pub state: String,
    /// Why the image is `failed`, or what is happening.
    pub status_message: String,
    /// The uploaded file's format: `qcow2` or `raw` (empty before upload).
    pub source_format: String,
    /// Size of the disk the image holds, bytes.
    pub virtual_size: i64,
    /// The project key whose data key encrypts the image.
    pub key_id: String,
    pub created_by: String,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl From<&ImageRow> for Image {
    fn from(r: &ImageRow) -> Self {
        Image {
            id: r.id.clone(),
            name: r.name.clone(),
            org_id: r.org_id.clone(),
            project_id: r.project_id.clone(),
            visibility: Visibility::parse(&r.visibility),
            state: r.state.clone(),
            status_message: r.status_message.clone(),
            source_format: r.source_format.clone(),
            virtual_size: r.virtual_size,
            key_id: r.key_id.clone(),
            created_by: r.created_by.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// DNS label, unique in the project.
    pub name: String,
    #[serde(default)]
    pub visibility: Visibility,
    /// Import the image from an object of one of the organization's
    /// buckets (the caller needs `s3.get_object` there) instead of
    /// uploading its file afterwards.
    #[serde(default)]
    pub source: Option<ObjectSource>,
}

/// An object holding a disk image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectSource {
    pub bucket: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateImage {
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// A block volume: an encrypted qcow2 (a copy-on-write overlay when it
/// comes from an image or a snapshot).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub size_bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot_id: Option<String>,
    /// The instance it is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// `creating`, `available`, `attaching`, `attached`, `detaching` or
    /// `failed`.
    pub state: String,
    pub status_message: String,
    pub key_id: String,
    pub created_by: String,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl From<&VolumeRow> for Volume {
    fn from(r: &VolumeRow) -> Self {
        Volume {
            id: r.id.clone(),
            name: r.name.clone(),
            org_id: r.org_id.clone(),
            project_id: r.project_id.clone(),
            size_bytes: r.size_bytes,
            source_image_id: r.source_image_id.clone(),
            source_snapshot_id: r.source_snapshot_id.clone(),
            instance_id: r.instance_id.clone(),
            state: r.state.clone(),
            status_message: r.status_message.clone(),
            key_id: r.key_id.clone(),
            created_by: r.created_by.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// DNS label, unique in the project.
    pub name: String,
    /// Size: bytes, or with a unit (`10G`, `512M`, `1T`; powers of 1024).
    /// From an image or snapshot it defaults to the source's size and may
    /// not be smaller.
    #[serde(default)]
    pub size: Option<String>,
    /// Image (name or id in this project, or id of an image the
    /// organization shares) the volume starts as a copy of.
    #[serde(default)]
    pub image: Option<String>,
    /// Snapshot (name or id in this project) the volume starts as a copy of.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVolume {
    /// A new, larger size (`20G`); volumes only grow, also while attached.
    #[serde(default)]
    pub size: Option<String>,
}

/// A point-in-time copy of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub volume_id: String,
    pub size_bytes: i64,
    pub state: String,
    pub created_by: String,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl From<&nuage_store::SnapshotRow> for Snapshot {
    fn from(r: &nuage_store::SnapshotRow) -> Self {
        Snapshot {
            id: r.id.clone(),
            name: r.name.clone(),
            org_id: r.org_id.clone(),
            project_id: r.project_id.clone(),
            volume_id: r.volume_id.clone(),
            size_bytes: r.size_bytes,
            state: r.state.clone(),
            created_by: r.created_by.clone(),
            created_at: r.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// DNS label, unique in the project.
    pub name: String,
    /// The volume (name or id) to snapshot; while a VM runs it is
    /// crash-consistent, otherwise exact.
    pub volume: String,
}

/// The largest volume: 16 TiB.
pub const MAX_VOLUME_BYTES: u64 = 16 << 40;

/// Parses a size such as `10G`, `512M`, `1T`, `4096` (bytes), in powers of
/// 1024, refusing zero, fractions and sizes above [`MAX_VOLUME_BYTES`].
pub fn parse_size(s: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_size",
            format!(
                "size {s:?} is not a whole number of bytes, or of K, M, G or T (1024-based), \
                 between 1M and 16T"
            ),
        )
    };
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit
        .trim_end_matches(['i', 'B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if !(1 << 20..=MAX_VOLUME_BYTES).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_size("10G").ok(), Some(10 << 30));
        assert_eq!(parse_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_size("1GiB").ok(), Some(1 << 30));
        assert_eq!(parse_size("1048576").ok(), Some(1 << 20));
        for bad in [
            "",
            "0",
            "-1G",
            "1.5G",
            "10X",
            "17T",
            "1K",
            "G",
            "99999999999999999999T",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert_eq!(e.code, "invalid_size", "{bad}");
        }
    }
}

/// A virtual machine. `desired` is what was asked, `state` what the node
/// agent last saw: `creating`, `starting`, `running`, `stopping`,
/// `stopped`, `failed` (with the reason in `status_message`), `deleting`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    /// The instance type it was made from, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_type: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub image_id: String,
    pub boot_volume_id: String,
    /// The OpenSSH public keys given to the guest.
    pub ssh_keys: Vec<String>,
    pub desired: String,
    pub state: String,
    pub status_message: String,
    /// The compute node that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub created_by: String,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "nuage_core::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl From<&nuage_store::InstanceRow> for Instance {
    fn from(r: &nuage_store::InstanceRow) -> Self {
        Instance {
            id: r.id.clone(),
            name: r.name.clone(),
            org_id: r.org_id.clone(),
            project_id: r.project_id.clone(),
            instance_type: r.instance_type.clone(),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            image_id: r.image_id.clone(),
            boot_volume_id: r.boot_volume_id.clone(),
            ssh_keys: serde_json::from_str(&r.ssh_keys).unwrap_or_default(),
            desired: r.desired.clone(),
            state: r.state.clone(),
            status_message: r.status_message.clone(),
            node_id: r.node_id.clone(),
            created_by: r.created_by.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// DNS label, unique in the project; also the guest's hostname.
    pub name: String,
    /// The image its boot volume starts from (name or id in this project,
    /// or id of an image the organization shares).
    pub image: String,
    /// An operator-defined instance type (`small` …); or give `vcpus` and
    /// `memory`.
    #[serde(default, rename = "type")]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub vcpus: Option<i64>,
    /// Memory: `512M`, `1G` (1024-based).
    #[serde(default)]
    pub memory: Option<String>,
    /// Boot volume size (default: the image's size; never smaller).
    #[serde(default)]
    pub disk_size: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA… comment`).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// cloud-init user-data (`#cloud-config …` or a script), at most 64 KiB;
    /// stored encrypted.
    #[serde(default)]
    pub user_data: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    /// Volume name or id, in the instance's project.
    pub volume: String,
}

/// The tail of an instance's serial console.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleLog {
    pub output: String,
}
