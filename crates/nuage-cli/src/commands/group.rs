//! Groups, which collect users and service accounts so roles can be granted
//! once (`nuage role grant group:<name> ROLE`).

use anyhow::Result;
use clap::{Args, Subcommand};
use nuage_core::model::{AddMember, CreateGroup, UpdateGroup};

use super::{IfMatch, OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: GroupCmd,
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// List groups.
    List(PageArgs),
    /// Create a group.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show a group.
    Show { name: String },
    /// Change a group's description.
    Update {
        name: String,
        #[arg(long)]
        description: String,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Delete a group.
    Delete { name: String },
    /// List a group's members.
    Members { name: String },
    /// Add a member: `user:<name>`, `service-account:<name>` or a principal id.
    AddMember { group: String, principal: String },
    /// Remove a member: `user:<name>`, `service-account:<name>` or a principal id.
    RemoveMember { group: String, principal: String },
}

const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("DESCRIPTION", "description"),
    ("ID", "id"),
    ("CREATED", "created_at"),
];

const FIELDS: &[Field] = &[
    ("name", "name"),
    ("id", "id"),
    ("description", "description"),
    ("generation", "generation"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

pub const MEMBER_COLUMNS: &[Field] = &[("KIND", "kind"), ("NAME", "name"), ("ID", "id")];

pub async fn run(ctx: &mut Ctx, args: GroupArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "groups"];
    let answer = match args.cmd {
        GroupCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
            return Ok(exit::OK);
        }
        GroupCmd::Create { name, description } => {
            let body = CreateGroup {
                name,
                description: description.unwrap_or_default(),
            };
            api.post(&base, &body).await?
        }
        GroupCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        GroupCmd::Update {
            name,
            description,
            if_match,
        } => {
            let body = UpdateGroup {
                description: Some(description),
            };
            let path = [&base[..], &[name.as_str()]].concat();
            api.patch(&path, &body, if_match.if_match).await?
        }
        GroupCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted group {name}."));
            return Ok(exit::OK);
        }
        GroupCmd::Members { name } => {
            let path = [&base[..], &[name.as_str(), "members"]].concat();
            let members = api.get(&path, &Query::new()).await?;
            if ctx.json {
                output::json(&members);
            } else {
                output::items(
                    members.as_array().map(Vec::as_slice).unwrap_or_default(),
                    MEMBER_COLUMNS,
                );
            }
            return Ok(exit::OK);
        }
        GroupCmd::AddMember { group, principal } => {
            let path = [&base[..], &[group.as_str(), "members"]].concat();
            api.post(
                &path,
                &AddMember {
                    principal: principal.clone(),
                },
            )
            .await?;
            output::done(ctx.json, &format!("Added {principal} to {group}."));
            return Ok(exit::OK);
        }
        GroupCmd::RemoveMember { group, principal } => {
            let path = [&base[..], &[group.as_str(), "members", principal.as_str()]].concat();
            api.delete(&path, None).await?;
            output::done(ctx.json, &format!("Removed {principal} from {group}."));
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, FIELDS);
    Ok(exit::OK)
}
