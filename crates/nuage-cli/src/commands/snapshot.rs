//! Snapshots of a project's volumes: point-in-time copies (crash-consistent
//! while a VM writes to the volume) that new volumes can start from
//! (`nuage volume create NAME --snapshot S`).

use std::collections::HashMap;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{names_by_id, OrgFlag, PageArgs};
use crate::client::{Listing, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    org: OrgFlag,
    /// Project holding the snapshots.
    #[arg(long, short = 'p', global = true, env = "NUAGE_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    cmd: SnapshotCmd,
}

#[derive(Debug, Subcommand)]
enum SnapshotCmd {
    /// List the project's snapshots.
    List(PageArgs),
    /// Snapshot a volume (attached or not).
    Create {
        name: String,
        /// The volume (name or id).
        #[arg(long)]
        volume: String,
    },
    /// Show a snapshot.
    Show { name: String },
    /// Delete a snapshot (volumes made from it keep their data).
    Delete { name: String },
}

/// `_volume` and `_size` are added for people (see [`for_people`]).
const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("VOLUME", "_volume"),
    ("SIZE", "_size"),
    ("CREATED", "created_at"),
];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("volume", "_volume"),
    ("size", "_size"),
    ("project", "project_id"),
    ("created by", "created_by"),
    ("created", "created_at"),
];

/// The snapshot with its volume by name (the id once the volume is gone)
/// and its size readable.
fn for_people(mut snap: Value, volumes: &HashMap<String, String>, exact: bool) -> Value {
    let size = match snap["size_bytes"].as_u64() {
        Some(b) if exact => format!("{} ({b} bytes)", output::human_bytes(b)),
        Some(b) => output::human_bytes(b),
        None => String::new(),
    };
    let volume = snap["volume_id"]
        .as_str()
        .map(|id| volumes.get(id).cloned().unwrap_or_else(|| id.to_string()))
        .unwrap_or_default();
    if let Some(m) = snap.as_object_mut() {
        m.insert("_size".into(), Value::String(size));
        m.insert("_volume".into(), Value::String(volume));
    }
    snap
}

pub async fn run(ctx: &mut Ctx, args: SnapshotArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let project = super::project(&args.project)?;
    let base = [
        "v1",
        "orgs",
        org.as_str(),
        "projects",
        project.as_str(),
        "snapshots",
    ];
    let volumes = [&base[..5], &["volumes"]].concat();
    let show = |snap: Value, names: &HashMap<String, String>| {
        if ctx.json {
            output::json(&snap);
        } else {
            output::show(false, &for_people(snap, names, true), FIELDS);
        }
    };
    match args.cmd {
        SnapshotCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            if ctx.json || listing.items.is_empty() {
                output::list(ctx.json, &listing, COLUMNS);
            } else {
                let names = names_by_id(&api, &volumes).await;
                let listing = Listing {
                    items: listing
                        .items
                        .into_iter()
                        .map(|s| for_people(s, &names, false))
                        .collect(),
                    ..listing
                };
                output::list(false, &listing, COLUMNS);
            }
        }
        SnapshotCmd::Create { name, volume } => {
            let s = api
                .post(&base, &json!({ "name": name, "volume": volume }))
                .await?;
            let names = if ctx.json {
                HashMap::new()
            } else {
                names_by_id(&api, &volumes).await
            };
            show(s, &names);
        }
        SnapshotCmd::Show { name } => {
            let s = api
                .get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?;
            let names = if ctx.json {
                HashMap::new()
            } else {
                names_by_id(&api, &volumes).await
            };
            show(s, &names);
        }
        SnapshotCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted snapshot {name}."));
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_by_name_while_they_exist() {
        let names = HashMap::from([("vol_1".to_string(), "data".to_string())]);
        let s = for_people(
            json!({"volume_id": "vol_1", "size_bytes": 64u64 << 20}),
            &names,
            false,
        );
        assert_eq!(
            (s["_volume"].as_str(), s["_size"].as_str()),
            (Some("data"), Some("64.0 MiB"))
        );
        let s = for_people(
            json!({"volume_id": "vol_2", "size_bytes": 1 << 20}),
            &names,
            true,
        );
        assert_eq!(s["_volume"], "vol_2", "a deleted volume keeps its id");
        assert_eq!(s["_size"], "1.0 MiB (1048576 bytes)");
    }
}
