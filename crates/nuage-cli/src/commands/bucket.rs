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
];

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
