//! S3 access keys. The secret is printed once, at creation, with the
//! settings an S3 client needs.

use anyhow::Result;
use clap::{Args, Subcommand};
use nuage_core::model::CreateAccessKey;
use serde_json::Value;

use super::{OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct AccessKeyArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: AccessKeyCmd,
}

#[derive(Debug, Subcommand)]
enum AccessKeyCmd {
    /// List access keys (yours, or a principal's with --principal).
    List {
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Create an S3 access key; its secret is printed once.
    Create {
        /// For a service account (`service-account:<name>`) instead of yourself.
        #[arg(long)]
        principal: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show an access key (never its secret).
    Show { id: String },
    /// Revoke an access key; requests signed with it fail at once.
    Revoke { id: String },
}

const COLUMNS: &[Field] = &[
    ("ID", "id"),
    ("PRINCIPAL", "principal_id"),
    ("DESCRIPTION", "description"),
    ("LAST USED", "last_used_at"),
    ("REVOKED", "revoked_at"),
];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("principal", "principal_id"),
    ("description", "description"),
    ("created", "created_at"),
    ("last used", "last_used_at"),
    ("revoked", "revoked_at"),
];

pub async fn run(ctx: &mut Ctx, args: AccessKeyArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "access-keys"];
    match args.cmd {
        AccessKeyCmd::List { principal, page } => {
            let mut q = Query::new();
            q.opt("principal", principal);
            let listing = api.list(&base, &q, &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
        }
        AccessKeyCmd::Create {
            principal,
            description,
        } => {
            let answer = api
                .post(
                    &base,
                    &CreateAccessKey {
                        principal,
                        description,
                    },
                )
                .await?;
            if ctx.json {
                output::json(&answer);
            } else {
                let mut shown = answer.get("access_key").cloned().unwrap_or_default();
                if let Value::Object(map) = &mut shown {
                    map.insert(
                        "secret".into(),
                        answer.get("secret_access_key").cloned().unwrap_or_default(),
                    );
                }
                let fields: Vec<Field> = FIELDS
                    .iter()
                    .copied()
                    .chain([("secret", "secret")])
                    .collect();
                output::show(false, &shown, &fields);
            }
            eprintln!(
                "Copy the secret now: it will not be shown again. S3 clients take it as \
                 aws_access_key_id / aws_secret_access_key."
            );
        }
        AccessKeyCmd::Show { id } => {
            let key = api
                .get(&[&base[..], &[id.as_str()]].concat(), &Query::new())
                .await?;
            output::show(ctx.json, &key, FIELDS);
        }
        AccessKeyCmd::Revoke { id } => {
            let key = api
                .delete(&[&base[..], &[id.as_str()]].concat(), None)
                .await?;
            if ctx.json {
                output::json(&key);
            } else {
                println!("Revoked access key {id}.");
            }
        }
    }
    Ok(exit::OK)
}
