//! Block volumes of a project: blank, or copy-on-write copies of an image,
//! encrypted on the server. Instances attach them as disks.

use std::collections::HashMap;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::bucket::strip_nulls;
use super::{OrgFlag, PageArgs};
use crate::client::{Api, Listing, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    org: OrgFlag,
    /// Project holding the volumes.
    #[arg(long, short = 'p', global = true, env = "NUAGE_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    cmd: VolumeCmd,
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// List the project's volumes.
    List(PageArgs),
    /// Create a volume: blank (give --size), or a copy of an image.
    Create {
        name: String,
        /// Size in bytes or with a unit, 1024-based: 512M, 10G, 1T. From an
        /// image it defaults to the image's size and may not be smaller.
        #[arg(long)]
        size: Option<String>,
        /// Image (name or id in the project, or id of an image the
        /// organization shares) the volume starts as a copy of.
        #[arg(long)]
        image: Option<String>,
    },
    /// Show a volume.
    Show { name: String },
    /// Delete a volume no instance has attached.
    Delete { name: String },
}

/// `_size` and `_image` are added for people (see [`for_people`]); `--json`
/// shows the API's answer untouched.
const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("SIZE", "_size"),
    ("IMAGE", "_image"),
    ("ATTACHED TO", "instance_id"),
    ("CREATED", "created_at"),
];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("status", "status_message"),
    ("size", "_size"),
    ("image", "_image"),
    ("snapshot", "source_snapshot_id"),
    ("attached to", "instance_id"),
    ("project", "project_id"),
    ("key id", "key_id"),
    ("created by", "created_by"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

/// The volume with its size readable and its image by name where the
/// project knows it (an image shared from another project keeps its id).
fn for_people(mut volume: Value, images: &HashMap<String, String>, exact: bool) -> Value {
    let size = match volume["size_bytes"].as_u64() {
        Some(b) if exact => format!("{} ({b} bytes)", output::human_bytes(b)),
        Some(b) => output::human_bytes(b),
        None => String::new(),
    };
    let image = volume["source_image_id"]
        .as_str()
        .map(|id| images.get(id).cloned().unwrap_or_else(|| id.to_string()))
        .unwrap_or_default();
    if let Some(m) = volume.as_object_mut() {
        m.insert("_size".into(), Value::String(size));
        m.insert("_image".into(), Value::String(image));
    }
    volume
}

/// Image ids to names in the project, when any of `volumes` starts from
/// an image. Only for display: on any failure the ids are shown.
async fn image_names(api: &Api, images: &[&str], volumes: &[&Value]) -> HashMap<String, String> {
    if volumes.iter().all(|v| v["source_image_id"].is_null()) {
        return HashMap::new();
    }
    let all = PageArgs {
        all: true,
        ..PageArgs::default()
    };
    let Ok(listing) = api.list(images, &Query::new(), &all).await else {
        return HashMap::new();
    };
    listing
        .items
        .iter()
        .filter_map(|i| {
            Some((
                i["id"].as_str()?.to_string(),
                i["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

pub async fn run(ctx: &mut Ctx, args: VolumeArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let Some(project) = args.project.clone() else {
        bail!("no project: pass --project (or set NUAGE_PROJECT)");
    };
    let base = [
        "v1",
        "orgs",
        org.as_str(),
        "projects",
        project.as_str(),
        "volumes",
    ];
    let images = [&base[..5], &["images"]].concat();
    let json_out = ctx.json;
    let show = |volume: Value, names: &HashMap<String, String>| {
        if json_out {
            output::json(&volume);
        } else {
            output::show(false, &for_people(volume, names, true), FIELDS);
        }
    };
    match args.cmd {
        VolumeCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            if ctx.json {
                output::list(true, &listing, COLUMNS);
            } else {
                let names =
                    image_names(&api, &images, &listing.items.iter().collect::<Vec<_>>()).await;
                let listing = Listing {
                    items: listing
                        .items
                        .into_iter()
                        .map(|v| for_people(v, &names, false))
                        .collect(),
                    ..listing
                };
                output::list(false, &listing, COLUMNS);
            }
        }
        VolumeCmd::Create { name, size, image } => {
            let body = strip_nulls(json!({ "name": name, "size": size, "image": image }));
            let v = api.post(&base, &body).await?;
            let names = if ctx.json {
                HashMap::new()
            } else {
                image_names(&api, &images, &[&v]).await
            };
            show(v, &names);
        }
        VolumeCmd::Show { name } => {
            let v = api
                .get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?;
            let names = if ctx.json {
                HashMap::new()
            } else {
                image_names(&api, &images, &[&v]).await
            };
            show(v, &names);
        }
        VolumeCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted volume {name}."));
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_by_name_when_known() {
        let names = HashMap::from([("img_1".to_string(), "debian".to_string())]);
        let v = for_people(
            json!({"size_bytes": 10u64 << 30, "source_image_id": "img_1"}),
            &names,
            false,
        );
        assert_eq!(
            (v["_size"].as_str(), v["_image"].as_str()),
            (Some("10.0 GiB"), Some("debian"))
        );
        let v = for_people(
            json!({"size_bytes": 1 << 20, "source_image_id": "img_2"}),
            &names,
            true,
        );
        assert_eq!(v["_size"], "1.0 MiB (1048576 bytes)");
        assert_eq!(
            v["_image"], "img_2",
            "an image of another project keeps its id"
        );
        let v = for_people(json!({"size_bytes": 1 << 20}), &names, false);
        assert_eq!(output::text(&v, "_image"), "-");
    }
}
