//! The caller's organization as tenants see it (quotas are set by operators,
//! see `nuage admin org`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nuage_core::model::UpdateOrg;
use serde_json::Value;

use super::{IfMatch, OrgFlag};
use crate::client::{Listing, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct OrgArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: OrgCmd,
}

#[derive(Debug, Subcommand)]
enum OrgCmd {
    /// List the organizations you belong to.
    List,
    /// Show the organization.
    Show,
    /// Change the display name or the roles that require a second factor.
    Update {
        #[arg(long)]
        display_name: Option<String>,
        /// Comma-separated roles that count only for sessions that passed a
        /// second factor (an empty string clears the list).
        #[arg(long, value_name = "ROLE,ROLE")]
        mfa_required_roles: Option<String>,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Show (or with --accept, set) the node labels the organization
    /// accepts: its new instances run only on nodes carrying one of them.
    NodeLabels {
        /// Comma-separated labels (an empty string accepts any node).
        #[arg(long, value_name = "LABEL,LABEL")]
        accept: Option<String>,
    },
}

pub const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("DISPLAY NAME", "display_name"),
    ("MAX PROJECTS", "max_projects"),
    ("ID", "id"),
    ("CREATED", "created_at"),
];

pub const FIELDS: &[Field] = &[
    ("name", "name"),
    ("display name", "display_name"),
    ("id", "id"),
    ("max projects", "max_projects"),
    ("roles requiring MFA", "mfa_required_roles"),
    ("generation", "generation"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

/// `a, b,,c` → `["a", "b", "c"]`; an empty string is the empty list.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

pub async fn run(ctx: &mut Ctx, args: OrgArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let answer = match args.cmd {
        OrgCmd::List => {
            let raw = api.get(&["v1", "orgs"], &Query::new()).await?;
            let listing = Listing {
                items: raw
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                next_page_token: None,
                raw,
            };
            output::list(ctx.json, &listing, COLUMNS);
            return Ok(exit::OK);
        }
        OrgCmd::Show => {
            let org = ctx.org(&args.org.org)?;
            api.get(&["v1", "orgs", &org], &Query::new()).await?
        }
        OrgCmd::Update {
            display_name,
            mfa_required_roles,
            if_match,
        } => {
            let org = ctx.org(&args.org.org)?;
            let body = UpdateOrg {
                display_name,
                mfa_required_roles: mfa_required_roles.as_deref().map(split_list),
            };
            if body.display_name.is_none() && body.mfa_required_roles.is_none() {
                bail!("nothing to change: pass --display-name or --mfa-required-roles");
            }
            api.patch(&["v1", "orgs", &org], &body, if_match.if_match)
                .await?
        }
        OrgCmd::NodeLabels { accept } => {
            let org = ctx.org(&args.org.org)?;
            let path = ["v1", "orgs", &org, "node-labels"];
            let answer = match accept {
                Some(list) => {
                    api.put(&path, &serde_json::json!({ "accepted": split_list(&list) }))
                        .await?
                }
                None => api.get(&path, &Query::new()).await?,
            };
            output::show(ctx.json, &answer, &[("accepted node labels", "accepted")]);
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, FIELDS);
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_lists() {
        assert_eq!(split_list("admin, owner,,"), vec!["admin", "owner"]);
        assert!(split_list("").is_empty());
    }
}
