//! Buckets of a project. Objects go through the S3 endpoint with any S3
//! client and an access key (`nuage access-key create`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct BucketArgs {
    #[command(flatten)]
    org: OrgFlag,
    /// Project holding the buckets.
    #[arg(long, short = 'p', global = true, env = "NUAGE_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    cmd: BucketCmd,
}

#[derive(Debug, Subcommand)]
enum BucketCmd {
    /// List the project's buckets.
    List(PageArgs),
    /// Create a bucket (name unique in the installation), encrypted under
    /// the project key "default".
    Create { name: String },
    /// Show a bucket.
    Show { name: String },
    /// Delete an empty bucket.
    Delete { name: String },
    /// Set the bucket's storage quota (writes beyond it are refused).
    SetQuota {
        name: String,
        /// Most bytes the bucket may hold (every version counts).
        #[arg(long)]
        max_bytes: Option<i64>,
        /// Most objects the bucket may hold (versions and delete markers count).
        #[arg(long)]
        max_objects: Option<i64>,
    },
    /// The project's storage: usage over all its buckets and its quota.
    Usage,
}

const COLUMNS: &[Field] = &[("NAME", "name"), ("KEY", "key"), ("CREATED", "created_at")];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("project", "project_id"),
    ("key", "key"),
    ("key id", "key_id"),
    ("created by", "created_by"),
    ("created", "created_at"),
    ("bytes", "usage.bytes"),
    ("objects", "usage.objects"),
    ("max bytes", "quota.max_bytes"),
    ("max objects", "quota.max_objects"),
];

const STORAGE_FIELDS: &[Field] = &[
    ("bytes", "usage.bytes"),
    ("objects", "usage.objects"),
    ("max bytes", "quota.max_bytes"),
    ("max objects", "quota.max_objects"),
];

/// A quota without the limits left out (none).
pub(crate) fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        other => other,
    }
}

pub async fn run(ctx: &mut Ctx, args: BucketArgs) -> Result<u8> {
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
        "buckets",
    ];
    match args.cmd {
        BucketCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
        }
        BucketCmd::Create { name } => {
            let b = api.post(&base, &json!({ "name": name })).await?;
            output::show(ctx.json, &b, FIELDS);
        }
        BucketCmd::Show { name } => {
            let b = api
                .get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?;
            output::show(ctx.json, &b, FIELDS);
        }
        BucketCmd::SetQuota {
            name,
            max_bytes,
            max_objects,
        } => {
            let quota = json!({ "max_bytes": max_bytes, "max_objects": max_objects });
            let b = api
                .patch(
                    &[&base[..], &[name.as_str()]].concat(),
                    &json!({ "quota": strip_nulls(quota) }),
                    None,
                )
                .await?;
            output::show(ctx.json, &b, FIELDS);
        }
        BucketCmd::Usage => {
            let s = api
                .get(&[&base[..5], &["storage"]].concat(), &Query::new())
                .await?;
            output::show(ctx.json, &s, STORAGE_FIELDS);
        }
        BucketCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            if !ctx.json {
                println!("Deleted bucket {name}.");
            }
        }
    }
    Ok(exit::OK)
}
