//! Instances: what the REST API does when a tenant creates, starts,
//! stops, reboots or deletes a VM, or attaches and detaches a volume.
//!
//! A request only records what the tenant wants (one transaction: the
//! instance, its boot volume and their data keys) and wakes the node
//! agent ([`crate::agent`]), which does the slow work — disk files, the
//! cloud-init seed, QEMU — and records what it sees. So a request returns
//! at once with the instance `creating`, `stopping` …, and a crash between
//! the two leaves a row the agent finishes, never half a VM.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use nuage_core::id::{new_id, Kind};
use nuage_core::model::Project;
use nuage_core::name;
use nuage_core::time::now_ms;
use nuage_core::{ApiError, ApiResult};
use nuage_kms::aead::{self, SecretKey};
use nuage_kms::{KeyUse, Purpose};
use nuage_store::{InstanceRow, VolumeRow};

use crate::model::{parse_size, CreateInstance};
use crate::service::{image_file, volume_file, Compute, LayerRef};

/// The most user-data a guest gets (cloud-init's own NoCloud limit is
/// larger; 64 KiB is what the big clouds allow).
pub const MAX_USER_DATA: usize = 64 * 1024;

pub(crate) fn user_data_aad(instance_id: &str) -> Vec<u8> {
    format!("nuage instance user-data {instance_id}").into_bytes()
}

/// Opens an instance's sealed user-data.
pub(crate) fn open_user_data(key: &SecretKey, i: &InstanceRow) -> ApiResult<Option<String>> {
    if i.sealed_user_data.is_empty() {
        return Ok(None);
    }
    let sealed = B64
        .decode(&i.sealed_user_data)
        .map_err(|_| ApiError::internal("sealed user-data is not base64"))?;
    let plain = aead::unwrap(key, &user_data_aad(&i.id), &sealed)
        .map_err(|_| ApiError::internal("the user-data does not open with its key"))?;
    String::from_utf8(plain.to_vec())
        .map(Some)
        .map_err(|_| ApiError::internal("the user-data is not UTF-8"))
}

fn invalid(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, msg)
}

impl Compute {
    /// Records a new instance (and its boot volume, an overlay of the
    /// image) for the agent to start.
    pub async fn instance_create(
        &self,
        project: &Project,
        body: &CreateInstance,
        created_by: &str,
        why: &Purpose,
    ) -> ApiResult<(InstanceRow, Vec<KeyUse>)> {
        name::validate("instance", &body.name)?;
        let (instance_type, vcpus, memory_mib) = self.instance_size(body).await?;
        for k in &body.ssh_keys {
            nuage_qemu::seed::check_ssh_key(k).map_err(|e| {
                invalid("invalid_ssh_key", format!("not an OpenSSH public key: {e}"))
            })?;
        }
        if let Some(ud) = &body.user_data {
            if ud.len() > MAX_USER_DATA {
                return Err(invalid(
                    "user_data_too_large",
                    format!(
                        "user-data is {} bytes; the limit is {MAX_USER_DATA}",
                        ud.len()
                    ),
                ));
            }
        }
        let image = self
            .0
            .store
            .image_usable(&project.org_id, &project.id, &body.image)
            .await?
            .ok_or_else(|| ApiError::not_found("image", &body.image))?;
        if image.state != "available" {
            return Err(ApiError::conflict(
                "image_not_available",
                format!("image {} is {}, not available", image.name, image.state),
            ));
        }
        let image_size = u64::try_from(image.virtual_size).unwrap_or(0);
        let disk = match body.disk_size.as_deref().map(parse_size).transpose()? {
            Some(s) if s < image_size => {
                return Err(invalid(
                    "volume_too_small",
                    format!("the boot disk must hold its image: at least {image_size} bytes"),
                ))
            }
            Some(s) => s,
            None => image_size,
        };
        let node =
            crate::placement::place_for(&self.0.store, &project.org_id, vcpus, memory_mib).await?;
        let limits = crate::placement::limits(&node);

        let key = self.0.kms.default_key(project).await?;
        let id = new_id(Kind::Project).replacen("prj_", "ins_", 1);
        let vol_id = new_id(Kind::Project).replacen("prj_", "vol_", 1);
        let (idk, used_i, idk_row) = self
            .0
            .kms
            .data_key_unsaved(&project.id, &key.name, &id, why)
            .await?;
        // The boot disk comes from a spare of the node when it has one
        // (only this server's own node keeps spares).
        let spare = if self.local_node() == Some(node.id.as_str()) {
            self.0.spares.take()
        } else {
            None
        };
        let (vdk, used_v, vdk_row) = self
            .new_disk_key(project, &key.name, &vol_id, why, &spare)
            .await?;
        let sealed_user_data = match &body.user_data {
            Some(ud) => B64.encode(aead::wrap(&idk.key, &user_data_aad(&id), ud.as_bytes())),
            None => String::new(),
        };
        let layers = vec![
            LayerRef {
                file: volume_file(&vol_id),
                data_key_id: vdk.id.clone(),
                project_id: project.id.clone(),
                owner: vol_id.clone(),
            },
            LayerRef {
                file: image_file(&image.id),
                data_key_id: image.data_key_id.clone(),
                project_id: image.project_id.clone(),
                owner: image.id.clone(),
            },
        ];
        let now = now_ms();
        let boot = VolumeRow {
            id: vol_id.clone(),
            org_id: project.org_id.clone(),
            project_id: project.id.clone(),
            name: format!("{}-boot", body.name),
            size_bytes: i64::try_from(disk).map_err(|_| ApiError::invalid("disk too large"))?,
            source_image_id: Some(image.id.clone()),
            source_snapshot_id: None,
            key_id: key.id.clone(),
            data_key_id: vdk.id.clone(),
            layers: serde_json::to_string(&layers)
                .map_err(|e| ApiError::internal(format!("layers do not encode: {e}")))?,
            instance_id: Some(id.clone()),
            state: "attached".into(),
            status_message: String::new(),
            created_by: created_by.to_string(),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        let row = InstanceRow {
            id: id.clone(),
            org_id: project.org_id.clone(),
            project_id: project.id.clone(),
            name: body.name.clone(),
            instance_type,
            vcpus,
            memory_mib,
            image_id: image.id.clone(),
            boot_volume_id: vol_id,
            ssh_keys: serde_json::to_string(&body.ssh_keys)
                .map_err(|e| ApiError::internal(format!("keys do not encode: {e}")))?,
            key_id: key.id.clone(),
            data_key_id: idk.id.clone(),
            sealed_user_data,
            desired: "running".into(),
            node_id: Some(node.id.clone()),
            state: "creating".into(),
            status_message: "waiting for its node".into(),
            created_by: created_by.to_string(),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        match self
            .0
            .store
            .instance_create(&[&idk_row, &vdk_row], &boot, &row, limits)
            .await
        {
            Err(e) if e.code == "already_exists" && e.detail.contains("volume") => {
                return Err(ApiError::conflict(
                    "already_exists",
                    format!(
                        "the boot volume name {} is taken by a volume of the project",
                        boot.name
                    ),
                ))
            }
            r => r?,
        }
        if let Some(s) = spare {
            s.set_aside(&self.0.spares.set_aside_path(&row.boot_volume_id));
        }
        self.wake_agent();
        Ok((row, vec![used_i, used_v]))
    }

    /// vCPUs and memory from the body: an operator-defined type, or
    /// explicit values.
    async fn instance_size(&self, body: &CreateInstance) -> ApiResult<(String, i64, i64)> {
        let explicit = body.vcpus.is_some() || body.memory.is_some();
        match (&body.instance_type, explicit) {
            (Some(_), true) => Err(invalid(
                "invalid_instance_size",
                "give an instance type or vcpus and memory, not both",
            )),
            (Some(t), false) => {
                let ty = self
                    .0
                    .store
                    .instance_type_get(t)
                    .await?
                    .ok_or_else(|| ApiError::not_found("instance type", t))?;
                Ok((ty.name, ty.vcpus, ty.memory_mib))
            }
            (None, _) => {
                let vcpus = body.vcpus.unwrap_or(1);
                let memory = body
                    .memory
                    .as_deref()
                    .map(crate::placement::parse_memory)
                    .transpose()?
                    .unwrap_or(512);
                crate::placement::check_request(vcpus, memory)?;
                Ok((String::new(), vcpus, memory))
            }
        }
    }

    /// Asks for the instance to run (a stopped or failed one starts again).
    pub async fn instance_start(&self, i: &InstanceRow) -> ApiResult<()> {
        match i.state.as_str() {
            "running" | "starting" | "creating" if i.desired == "running" => {
                Err(ApiError::conflict(
                    "instance_running",
                    format!("instance {} is already {}", i.name, i.state),
                ))
            }
            "stopping" => Err(ApiError::conflict(
                "instance_stopping",
                format!(
                    "instance {} is stopping; start it once it is stopped",
                    i.name
                ),
            )),
            _ => {
                self.0
                    .store
                    .instance_set_desired(&i.id, "running", "starting", "")
                    .await?;
                self.wake_agent();
                Ok(())
            }
        }
    }

    /// Asks the guest to power off (ACPI), then forces it after the stop
    /// timeout; `force` skips the request.
    pub async fn instance_stop(&self, i: &InstanceRow, force: bool) -> ApiResult<()> {
        if i.desired == "stopped" && !force {
            return Err(ApiError::conflict(
                "instance_stopped",
                format!("instance {} is already {}", i.name, i.state),
            ));
        }
        let message = if force { "force" } else { "" };
        self.0
            .store
            .instance_set_desired(&i.id, "stopped", "stopping", message)
            .await?;
        self.wake_agent();
        Ok(())
    }

    /// Resets a running guest at once (like a reset button).
    pub async fn instance_reboot(&self, i: &InstanceRow) -> ApiResult<()> {
        if i.state != "running" {
            return Err(ApiError::conflict(
                "instance_not_running",
                format!("instance {} is {}, not running", i.name, i.state),
            ));
        }
        if !self.is_local(i) {
            return self
                .run_on_node(i, &crate::tasks::NodeTask::Reboot, "reset its guest")
                .await;
        }
        let vm = self.0.host.vm(&i.id).await?;
        vm.qmp()
            .execute("system_reset", serde_json::json!({}))
            .await
            .map_err(crate::service::qemu_err)?;
        Ok(())
    }

    /// Asks for the instance to go: its VM, seed and boot volume; other
    /// volumes are detached and kept.
    pub async fn instance_delete(&self, i: &InstanceRow) -> ApiResult<()> {
        self.0
            .store
            .instance_set_desired(&i.id, "deleted", "deleting", "")
            .await?;
        self.wake_agent();
        Ok(())
    }

    /// Attaches a volume of the same project (hot when the VM runs).
    pub async fn volume_attach(&self, i: &InstanceRow, v: &VolumeRow) -> ApiResult<()> {
        if i.desired == "deleted" {
            return Err(ApiError::conflict(
                "instance_deleting",
                format!("instance {} is being deleted", i.name),
            ));
        }
        if v.project_id != i.project_id {
            return Err(ApiError::not_found("volume", &v.name));
        }
        if v.state != "available" || v.instance_id.is_some() {
            return Err(ApiError::conflict(
                "volume_in_use",
                format!("volume {} is {}; detach it first", v.name, v.state),
            ));
        }
        let attached = self.0.store.instance_volumes(&i.id).await?;
        if attached.len() >= crate::agent::MAX_DISKS {
            return Err(ApiError::conflict(
                "too_many_volumes",
                format!(
                    "an instance holds at most {} volumes",
                    crate::agent::MAX_DISKS
                ),
            ));
        }
        self.0.store.volume_attach(&v.id, &i.id).await?;
        self.wake_agent();
        Ok(())
    }

    /// Detaches a volume (the guest is asked to let go of it first).
    pub async fn volume_detach(&self, i: &InstanceRow, v: &VolumeRow) -> ApiResult<()> {
        if v.instance_id.as_deref() != Some(i.id.as_str()) {
            return Err(ApiError::conflict(
                "volume_not_attached",
                format!("volume {} is not attached to {}", v.name, i.name),
            ));
        }
        if v.id == i.boot_volume_id {
            return Err(ApiError::conflict(
                "boot_volume",
                "the boot volume stays with its instance",
            ));
        }
        self.0
            .store
            .volume_set_attachment(&v.id, "detaching")
            .await?;
        self.wake_agent();
        Ok(())
    }

    /// The Unix socket of the instance's serial console, on this server's
    /// node (the console of a node of its own is relayed by its agent).
    pub fn console_socket(&self, i: &InstanceRow) -> ApiResult<std::path::PathBuf> {
        self.on_local_node(i, "its console is relayed by its node's agent")?;
        Ok(self.0.host.console_socket(&i.id))
    }

    /// The last `max_bytes` of the instance's serial console (its log is
    /// in the shared compute directory, whichever node runs it).
    pub fn console_log(&self, i: &InstanceRow, max_bytes: u64) -> ApiResult<String> {
        let dir = self.0.host.vm_dir(&i.id);
        if !dir.exists() {
            return Ok(String::new());
        }
        nuage_qemu::machine::console_log(&dir, max_bytes).map_err(crate::service::qemu_err)
    }
}
