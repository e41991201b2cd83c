//! Rows of virtual machine instances, and the volume attachments they
//! hold. `desired` is what the tenant asked (`running`, `stopped`,
//! `deleted`); `state` is what the node agent last observed.

use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::compute::{insert_volume, VolumeRow};
use crate::kms::{insert_data_key, DataKeyRow};
use crate::{db_err, insert_err, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    /// The operator-defined type it was made from ('' for explicit sizes).
    pub instance_type: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub image_id: String,
    pub boot_volume_id: String,
    /// JSON array of OpenSSH public keys.
    pub ssh_keys: String,
    pub key_id: String,
    pub data_key_id: String,
    /// Base64 of the user-data sealed under the instance's data key ('' for
    /// none).
    pub sealed_user_data: String,
    pub desired: String,
    pub node_id: Option<String>,
    pub state: String,
    pub status_message: String,
    pub created_by: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const INSTANCE_COLS: &str = "id, org_id, project_id, name, instance_type, vcpus, memory_mib, \
     image_id, boot_volume_id, ssh_keys, key_id, data_key_id, sealed_user_data, desired, node_id, \
     state, status_message, created_by, generation, created_at, updated_at";

fn row_to_instance(r: &AnyRow) -> Result<InstanceRow, sqlx::Error> {
    Ok(InstanceRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        instance_type: r.try_get("instance_type")?,
        vcpus: r.try_get("vcpus")?,
        memory_mib: r.try_get("memory_mib")?,
        image_id: r.try_get("image_id")?,
        boot_volume_id: r.try_get("boot_volume_id")?,
        ssh_keys: r.try_get("ssh_keys")?,
        key_id: r.try_get("key_id")?,
        data_key_id: r.try_get("data_key_id")?,
        sealed_user_data: r.try_get("sealed_user_data")?,
        desired: r.try_get("desired")?,
        node_id: r.try_get("node_id")?,
        state: r.try_get("state")?,
        status_message: r.try_get("status_message")?,
        created_by: r.try_get("created_by")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Inserts an instance with its boot volume and both data keys in one
    /// transaction: either the whole request is recorded or nothing is.
    /// `limits` (vCPUs, MiB) are what its node may hand out in all: the
    /// node's row is locked and its usage summed again inside the
    /// transaction, so two concurrent creations cannot both take the last
    /// room that placement saw.
    pub async fn instance_create(
        &self,
        deks: &[&DataKeyRow],
        boot: &VolumeRow,
        i: &InstanceRow,
        limits: (i64, i64),
    ) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        if let Some(node) = &i.node_id {
            sqlx::query("UPDATE compute_nodes SET heartbeat_at = heartbeat_at WHERE id = $1")
                .bind(node)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let r = sqlx::query(
                "SELECT CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
                 CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib \
                 FROM instances WHERE node_id = $1 AND state <> 'deleted'",
            )
            .bind(node)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            let used_cpu: i64 = r.try_get("vcpus").map_err(db_err)?;
            let used_mem: i64 = r.try_get("memory_mib").map_err(db_err)?;
            if used_cpu + i.vcpus > limits.0 || used_mem + i.memory_mib > limits.1 {
                return Err(ApiError::conflict(
                    "insufficient_capacity",
                    "the node's last room was just taken by another instance; try again",
                ));
            }
        }
        for d in deks {
            insert_data_key(&mut tx, d).await.map_err(db_err)?;
        }
        sqlx::query(&format!(
            "INSERT INTO instances ({INSTANCE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        ))
        .bind(&i.id)
        .bind(&i.org_id)
        .bind(&i.project_id)
        .bind(&i.name)
        .bind(&i.instance_type)
        .bind(i.vcpus)
        .bind(i.memory_mib)
        .bind(&i.image_id)
        .bind(&i.boot_volume_id)
        .bind(&i.ssh_keys)
        .bind(&i.key_id)
        .bind(&i.data_key_id)
        .bind(&i.sealed_user_data)
        .bind(&i.desired)
        .bind(&i.node_id)
        .bind(&i.state)
        .bind(&i.status_message)
        .bind(&i.created_by)
        .bind(i.generation)
        .bind(i.created_at)
        .bind(i.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("instance", &i.name))?;
        insert_volume(&mut tx, boot)
            .await
            .map_err(insert_err("volume", &boot.name))?;
        tx.commit().await.map_err(db_err)
    }

    /// The instance named (or with id) `name` in project `project_id`.
    pub async fn instance_get(
        &self,
        project_id: &str,
        name: &str,
    ) -> ApiResult<Option<InstanceRow>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE project_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_instance(&r)).transpose().map_err(db_err)
    }

    pub async fn instance_by_id(&self, id: &str) -> ApiResult<Option<InstanceRow>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_instance(&r)).transpose().map_err(db_err)
    }

    /// Instances of a project, by name, after `after`, at most `limit`.
    pub async fn instance_list(
        &self,
        project_id: &str,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<InstanceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE project_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_instance)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Every instance placed on `node_id` (what its agent reconciles).
    pub async fn instances_on_node(&self, node_id: &str) -> ApiResult<Vec<InstanceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE node_id = $1 ORDER BY id"
        ))
        .bind(node_id)
        .fetch_all(&self.write)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_instance)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Sets what the tenant wants, if the instance is still at
    /// `generation` (`precondition_failed` otherwise); `state` moves to
    /// `next_state` so the change shows at once.
    pub async fn instance_set_desired(
        &self,
        id: &str,
        desired: &str,
        next_state: &str,
        message: &str,
    ) -> ApiResult<()> {
        sqlx::query(
            "UPDATE instances SET desired = $1, state = $2, status_message = $3, \
             generation = generation + 1, updated_at = $4 WHERE id = $5",
        )
        .bind(desired)
        .bind(next_state)
        .bind(message)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Records what the agent observed.
    pub async fn instance_set_state(&self, id: &str, state: &str, message: &str) -> ApiResult<()> {
        sqlx::query(
            "UPDATE instances SET state = $1, status_message = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(message)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Replaces the status message alone (`updated_at` stays: a stop's
    /// timeout counts from the request).
    pub async fn instance_note(&self, id: &str, message: &str) -> ApiResult<()> {
        sqlx::query("UPDATE instances SET status_message = $1 WHERE id = $2")
            .bind(message)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Removes a deleted instance's row, its boot volume row, and frees the
    /// other volumes it held, in one transaction.
    pub async fn instance_remove(&self, i: &InstanceRow) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query("DELETE FROM volumes WHERE id = $1")
            .bind(&i.boot_volume_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "UPDATE volumes SET instance_id = NULL, state = 'available', \
             generation = generation + 1, updated_at = $1 WHERE instance_id = $2",
        )
        .bind(nuage_core::time::now_ms())
        .bind(&i.id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(&i.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// The volumes attached (or being attached or detached) to an instance,
    /// the boot volume first, then by attachment time.
    pub async fn instance_volumes(&self, instance_id: &str) -> ApiResult<Vec<VolumeRow>> {
        self.volumes_where("instance_id = $1 ORDER BY updated_at, id", instance_id)
            .await
    }

    /// The volumes held by the instances of node `node_id`, in one read:
    /// by instance, each instance's in [`Store::instance_volumes`] order.
    pub async fn node_volumes(&self, node_id: &str) -> ApiResult<Vec<VolumeRow>> {
        self.volumes_where(
            "instance_id IN (SELECT id FROM instances WHERE node_id = $1) \
             ORDER BY instance_id, updated_at, id",
            node_id,
        )
        .await
    }

    /// Marks `volume_id` as being attached to `instance_id`, if it is still
    /// free (`conflict` otherwise).
    pub async fn volume_attach(&self, volume_id: &str, instance_id: &str) -> ApiResult<()> {
        let done = sqlx::query(
            "UPDATE volumes SET instance_id = $1, state = 'attaching', \
             generation = generation + 1, updated_at = $2 \
             WHERE id = $3 AND instance_id IS NULL AND state = 'available'",
        )
        .bind(instance_id)
        .bind(nuage_core::time::now_ms())
        .bind(volume_id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::conflict(
                "volume_in_use",
                "the volume is attached or busy; detach it first",
            ));
        }
        Ok(())
    }

    /// Moves an attached volume's state (`attached`, `detaching`) or, with
    /// `available`, releases it from its instance.
    pub async fn volume_set_attachment(&self, volume_id: &str, state: &str) -> ApiResult<()> {
        let release = state == "available";
        sqlx::query(&format!(
            "UPDATE volumes SET state = $1, {}generation = generation + 1, updated_at = $2 \
             WHERE id = $3",
            if release { "instance_id = NULL, " } else { "" }
        ))
        .bind(state)
        .bind(nuage_core::time::now_ms())
        .bind(volume_id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
