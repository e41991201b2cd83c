//! Block volumes of a project: blank, or copy-on-write copies of an image
//! or a snapshot, encrypted on the server. Instances attach them as disks;
//! they grow (also while attached), never shrink.

use std::collections::HashMap;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::bucket::strip_nulls;
use super::{names_by_id, OrgFlag, PageArgs, WaitArgs};
use crate::client::{Api, Listing, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};
use crate::wait::{Goal, Wait};

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
    /// Create a volume: blank (give --size), or a copy of an image or a
    /// snapshot.
    Create {
        name: String,
        /// Size in bytes or with a unit, 1024-based: 512M, 10G, 1T. From an
        /// image or snapshot it defaults to its size and may not be smaller.
        #[arg(long)]
        size: Option<String>,
        /// Image (name or id in the project, or id of an image the
        /// organization shares) the volume starts as a copy of.
        #[arg(long, conflicts_with = "snapshot")]
        image: Option<String>,
        /// Snapshot (name or id in the project) the volume starts as a copy of.
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Show a volume.
    Show { name: String },
    /// Attach a volume to an instance (hot-plugged if it runs).
    Attach {
        name: String,
        /// The instance (name or id).
        #[arg(long, short = 'i')]
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Detach a volume from its instance (hot-unplugged if it runs).
    Detach {
        name: String,
        /// The instance (default: the one the volume is attached to).
        #[arg(long, short = 'i')]
        instance: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Grow a volume (also while attached; the guest sees the new size).
    /// Volumes never shrink.
    Resize {
        name: String,
        /// The new size: 20G, 512M … (1024-based), larger than now.
        #[arg(long)]
        size: String,
    },
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
    names_by_id(api, images).await
}

pub async fn run(ctx: &mut Ctx, args: VolumeArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let project = super::project(&args.project)?;
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
        VolumeCmd::Create {
            name,
            size,
            image,
            snapshot,
        } => {
            let body = strip_nulls(
                json!({ "name": name, "size": size, "image": image, "snapshot": snapshot }),
            );
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
        VolumeCmd::Attach {
            name,
            instance,
            wait,
        } => {
            let path = [&base[..5], &["instances", instance.as_str(), "volumes"]].concat();
            let v = api.post(&path, &json!({ "volume": name })).await?;
            let v = if wait.wait {
                let vol = [&base[..], &[name.as_str()]].concat();
                let what = format!("volume {name}");
                Wait {
                    api: &api,
                    path: &vol,
                    what: &what,
                    goal: Goal::State("attached"),
                    passing: &["attaching"],
                    timeout: wait.timeout(),
                    show: !ctx.json,
                }
                .run()
                .await?
            } else {
                v
            };
            if ctx.json {
                output::json(&v);
            } else if v["state"] == "attached" {
                println!("Attached volume {name} to instance {instance}.");
            } else {
                println!("Attaching volume {name} to instance {instance}.");
            }
        }
        VolumeCmd::Detach {
            name,
            instance,
            wait,
        } => {
            let vol = [&base[..], &[name.as_str()]].concat();
            let instance = match instance {
                Some(i) => i,
                None => {
                    let v = api.get(&vol, &Query::new()).await?;
                    match v["instance_id"].as_str() {
                        Some(id) => id.to_string(),
                        None => bail!("volume {name} is not attached to an instance"),
                    }
                }
            };
            let path = [
                &base[..5],
                &["instances", instance.as_str(), "volumes", name.as_str()],
            ]
            .concat();
            let v = api.delete(&path, None).await?;
            let v = if wait.wait {
                let what = format!("volume {name}");
                Wait {
                    api: &api,
                    path: &vol,
                    what: &what,
                    goal: Goal::State("available"),
                    passing: &["detaching"],
                    timeout: wait.timeout(),
                    show: !ctx.json,
                }
                .run()
                .await?
            } else {
                v
            };
            if ctx.json {
                output::json(&v);
            } else if v["state"] == "available" {
                println!("Detached volume {name}.");
            } else {
                println!("Detaching volume {name}.");
            }
        }
        VolumeCmd::Resize { name, size } => {
            let v = api
                .patch(
                    &[&base[..], &[name.as_str()]].concat(),
                    &json!({ "size": size }),
                    None,
                )
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
