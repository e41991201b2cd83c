//! Rows of compute: images and volumes of projects (the disks themselves
//! are files that `nuage-compute` drives through QEMU's tools). A row's
//! `state` and `status_message` are what a reconciler observed; the other
//! columns are what the tenant asked for.

use nuage_core::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::kms::{insert_data_key, DataKeyRow};
use crate::{db_err, insert_err, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    /// `project` (its project only) or `org` (every project of the org).
    pub visibility: String,
    /// What was uploaded: `qcow2` or `raw` ('' until inspected).
    pub source_format: String,
    pub virtual_size: i64,
    pub key_id: String,
    pub data_key_id: String,
    /// `uploading`, `available` or `failed`.
    pub state: String,
    pub status_message: String,
    pub created_by: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    pub size_bytes: i64,
    pub source_image_id: Option<String>,
    pub source_snapshot_id: Option<String>,
    pub key_id: String,
    pub data_key_id: String,
    /// JSON: the chain of disk files, top first, with each one's data key.
    pub layers: String,
    pub instance_id: Option<String>,
    /// `creating`, `available`, `attached`, `failed`.
    pub state: String,
    pub status_message: String,
    pub created_by: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const IMAGE_COLS: &str = "id, org_id, project_id, name, visibility, source_format, virtual_size, \
     key_id, data_key_id, state, status_message, created_by, generation, created_at, updated_at";

const VOLUME_COLS: &str = "id, org_id, project_id, name, size_bytes, source_image_id, \
     source_snapshot_id, key_id, data_key_id, layers, instance_id, state, status_message, \
     created_by, generation, created_at, updated_at";

fn row_to_image(r: &AnyRow) -> Result<ImageRow, sqlx::Error> {
    Ok(ImageRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        visibility: r.try_get("visibility")?,
        source_format: r.try_get("source_format")?,
        virtual_size: r.try_get("virtual_size")?,
        key_id: r.try_get("key_id")?,
        data_key_id: r.try_get("data_key_id")?,
        state: r.try_get("state")?,
        status_message: r.try_get("status_message")?,
        created_by: r.try_get("created_by")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn row_to_volume(r: &AnyRow) -> Result<VolumeRow, sqlx::Error> {
    Ok(VolumeRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        size_bytes: r.try_get("size_bytes")?,
        source_image_id: r.try_get("source_image_id")?,
        source_snapshot_id: r.try_get("source_snapshot_id")?,
        key_id: r.try_get("key_id")?,
        data_key_id: r.try_get("data_key_id")?,
        layers: r.try_get("layers")?,
        instance_id: r.try_get("instance_id")?,
        state: r.try_get("state")?,
        status_message: r.try_get("status_message")?,
        created_by: r.try_get("created_by")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    // ---- images ---------------------------------------------------------------

    /// Inserts the image and its data key in one transaction.
    pub async fn image_create(&self, dek: &DataKeyRow, i: &ImageRow) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        insert_data_key(&mut tx, dek).await.map_err(db_err)?;
        sqlx::query(&format!(
            "INSERT INTO images ({IMAGE_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&i.id)
        .bind(&i.org_id)
        .bind(&i.project_id)
        .bind(&i.name)
        .bind(&i.visibility)
        .bind(&i.source_format)
        .bind(i.virtual_size)
        .bind(&i.key_id)
        .bind(&i.data_key_id)
        .bind(&i.state)
        .bind(&i.status_message)
        .bind(&i.created_by)
        .bind(i.generation)
        .bind(i.created_at)
        .bind(i.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("image", &i.name))?;
        tx.commit().await.map_err(db_err)
    }

    /// The image named (or with id) `name` in project `project_id`.
    pub async fn image_get(&self, project_id: &str, name: &str) -> ApiResult<Option<ImageRow>> {
        let row = sqlx::query(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE project_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_image(&r)).transpose().map_err(db_err)
    }

    /// An image by id, if `project_id` may use it: its own, or one its
    /// organization shares with every project.
    pub async fn image_usable(
        &self,
        org_id: &str,
        project_id: &str,
        id_or_name: &str,
    ) -> ApiResult<Option<ImageRow>> {
        if let Some(own) = self.image_get(project_id, id_or_name).await? {
            return Ok(Some(own));
        }
        let row = sqlx::query(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE org_id = $1 AND id = $2 AND visibility = 'org'"
        ))
        .bind(org_id)
        .bind(id_or_name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_image(&r)).transpose().map_err(db_err)
    }

    /// Images of a project, by name, after `after`, at most `limit`.
    pub async fn image_list(
        &self,
        project_id: &str,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<ImageRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {IMAGE_COLS} FROM images WHERE project_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_image)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Records what inspecting and importing the upload found.
    pub async fn image_set_state(
        &self,
        id: &str,
        state: &str,
        message: &str,
        source_format: &str,
        virtual_size: i64,
    ) -> ApiResult<()> {
        sqlx::query(
            "UPDATE images SET state = $1, status_message = $2, source_format = $3, \
             virtual_size = $4, generation = generation + 1, updated_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(message)
        .bind(source_format)
        .bind(virtual_size)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Sets who may use the image (`project` or `org`).
    pub async fn image_set_visibility(&self, id: &str, visibility: &str) -> ApiResult<()> {
        sqlx::query(
            "UPDATE images SET visibility = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(visibility)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Deletes the image row unless a volume still uses it as its base
    /// (`conflict`, nothing changed).
    pub async fn image_delete(&self, id: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let users: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM volumes WHERE source_image_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        if users > 0 {
            return Err(ApiError::conflict(
                "image_in_use",
                format!("the image is the base of {users} volume(s); delete them first"),
            ));
        }
        sqlx::query("DELETE FROM images WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    // ---- volumes --------------------------------------------------------------

    /// Inserts the volume and its data key in one transaction.
    pub async fn volume_create(&self, dek: &DataKeyRow, v: &VolumeRow) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        insert_data_key(&mut tx, dek).await.map_err(db_err)?;
        insert_volume(&mut tx, v)
            .await
            .map_err(insert_err("volume", &v.name))?;
        tx.commit().await.map_err(db_err)
    }

    pub async fn volume_by_id(&self, id: &str) -> ApiResult<Option<VolumeRow>> {
        Ok(self.volumes_where("id = $1", id).await?.into_iter().next())
    }

    /// Volumes matching `condition` (one `$1` parameter bound to `value`).
    pub(crate) async fn volumes_where(
        &self,
        condition: &str,
        value: &str,
    ) -> ApiResult<Vec<VolumeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUME_COLS} FROM volumes WHERE {condition}"
        ))
        .bind(value)
        .fetch_all(&self.write)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_volume)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// The volume named (or with id) `name` in project `project_id`.
    pub async fn volume_get(&self, project_id: &str, name: &str) -> ApiResult<Option<VolumeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLS} FROM volumes WHERE project_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_volume(&r)).transpose().map_err(db_err)
    }

    /// Volumes of a project, by name, after `after`, at most `limit`.
    pub async fn volume_list(
        &self,
        project_id: &str,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<VolumeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUME_COLS} FROM volumes WHERE project_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_volume)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    /// Records the observed state of a volume (and its chain of files).
    pub async fn volume_set_state(
        &self,
        id: &str,
        state: &str,
        message: &str,
        layers: &str,
        size_bytes: i64,
    ) -> ApiResult<()> {
        sqlx::query(
            "UPDATE volumes SET state = $1, status_message = $2, layers = $3, size_bytes = $4, \
             generation = generation + 1, updated_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(message)
        .bind(layers)
        .bind(size_bytes)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Deletes a volume row unless it is attached (`conflict`).
    pub async fn volume_delete(&self, id: &str) -> ApiResult<()> {
        let done = sqlx::query("DELETE FROM volumes WHERE id = $1 AND instance_id IS NULL")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::conflict(
                "volume_attached",
                "the volume is attached to an instance; detach it first",
            ));
        }
        Ok(())
    }
}

pub(crate) async fn insert_volume(
    conn: &mut sqlx::AnyConnection,
    v: &VolumeRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO volumes ({VOLUME_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15, $16, $17)"
    ))
    .bind(&v.id)
    .bind(&v.org_id)
    .bind(&v.project_id)
    .bind(&v.name)
    .bind(v.size_bytes)
    .bind(&v.source_image_id)
    .bind(&v.source_snapshot_id)
    .bind(&v.key_id)
    .bind(&v.data_key_id)
    .bind(&v.layers)
    .bind(&v.instance_id)
    .bind(&v.state)
    .bind(&v.status_message)
    .bind(&v.created_by)
    .bind(v.generation)
    .bind(v.created_at)
    .bind(v.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A point-in-time copy of a volume: the chain of files it froze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    pub volume_id: String,
    pub size_bytes: i64,
    /// JSON: the frozen chain of files, top first, with their data keys.
    pub layers: String,
    pub state: String,
    pub status_message: String,
    pub created_by: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const SNAPSHOT_COLS: &str = "id, org_id, project_id, name, volume_id, size_bytes, layers, state, \
     status_message, created_by, generation, created_at, updated_at";

fn row_to_snapshot(r: &AnyRow) -> Result<SnapshotRow, sqlx::Error> {
    Ok(SnapshotRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        volume_id: r.try_get("volume_id")?,
        size_bytes: r.try_get("size_bytes")?,
        layers: r.try_get("layers")?,
        state: r.try_get("state")?,
        status_message: r.try_get("status_message")?,
        created_by: r.try_get("created_by")?,
        generation: r.try_get("generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Records a snapshot and the volume's new chain (its new top file
    /// over the files the snapshot froze) in one transaction.
    pub async fn snapshot_create(&self, s: &SnapshotRow, volume_layers: &str) -> ApiResult<()> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        sqlx::query(&format!(
            "INSERT INTO snapshots ({SNAPSHOT_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&s.id)
        .bind(&s.org_id)
        .bind(&s.project_id)
        .bind(&s.name)
        .bind(&s.volume_id)
        .bind(s.size_bytes)
        .bind(&s.layers)
        .bind(&s.state)
        .bind(&s.status_message)
        .bind(&s.created_by)
        .bind(s.generation)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("snapshot", &s.name))?;
        sqlx::query(
            "UPDATE volumes SET layers = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(volume_layers)
        .bind(nuage_core::time::now_ms())
        .bind(&s.volume_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// The snapshot named (or with id) `name` in project `project_id`.
    pub async fn snapshot_get(
        &self,
        project_id: &str,
        name: &str,
    ) -> ApiResult<Option<SnapshotRow>> {
        let row = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE project_id = $1 AND (name = $2 OR id = $2)"
        ))
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        row.map(|r| row_to_snapshot(&r)).transpose().map_err(db_err)
    }

    /// Snapshots of a project, by name, after `after`, at most `limit`.
    pub async fn snapshot_list(
        &self,
        project_id: &str,
        after: &str,
        limit: i64,
    ) -> ApiResult<Vec<SnapshotRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE project_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(row_to_snapshot)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    pub async fn snapshot_delete(&self, id: &str) -> ApiResult<()> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// How many volumes and snapshots still name `needle` (a file or data
    /// key id) in their chain of files: what a delete may not remove while
    /// non-zero.
    pub async fn layers_referencing(&self, needle: &str) -> ApiResult<i64> {
        let pattern = format!("%{needle}%");
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST((SELECT COUNT(*) FROM volumes WHERE layers LIKE $1) + \
             (SELECT COUNT(*) FROM snapshots WHERE layers LIKE $1) AS BIGINT)",
        )
        .bind(&pattern)
        .fetch_one(&self.write)
        .await
        .map_err(db_err)?;
        Ok(n)
    }

    /// Records a volume's new size.
    pub async fn volume_set_size(&self, id: &str, size_bytes: i64) -> ApiResult<()> {
        sqlx::query(
            "UPDATE volumes SET size_bytes = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(size_bytes)
        .bind(nuage_core::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
