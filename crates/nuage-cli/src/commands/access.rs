//! Roles and role bindings: who holds which built-in role, on the whole
//! organization or on one project.

use anyhow::Result;
use clap::{Args, Subcommand};
use nuage_core::model::CreateRoleBinding;

use super::{OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: RoleCmd,
}

#[derive(Debug, Subcommand)]
enum RoleCmd {
    /// List the roles that can be granted, and whether they require a second factor.
    List,
    /// Grant a role to `user:<name>`, `group:<name>`, `service-account:<name>`
    /// (or a principal id), on the organization or on a project.
    Grant {
        principal: String,
        role: String,
        /// Grant it on this project only.
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a role binding (see `nuage role bindings` for ids).
    Revoke { binding_id: String },
    /// List role bindings of the organization, or of a project.
    Bindings {
        /// The bindings on this project.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
}

const ROLE_COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("REQUIRES MFA", "requires_mfa"),
    ("DESCRIPTION", "description"),
];

const BINDING_COLUMNS: &[Field] = &[
    ("ID", "id"),
    ("KIND", "subject.kind"),
    ("PRINCIPAL", "subject.name"),
    ("ROLE", "role"),
    ("PROJECT", "project_id"),
    ("CREATED", "created_at"),
];

const BINDING_FIELDS: &[Field] = &[
    ("id", "id"),
    ("principal kind", "subject.kind"),
    ("principal", "subject.name"),
    ("principal id", "subject.id"),
    ("role", "role"),
    ("project", "project_id"),
    ("created", "created_at"),
];

pub async fn run(ctx: &mut Ctx, args: RoleArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let org_path = ["v1", "orgs", org.as_str()];
    match args.cmd {
        RoleCmd::List => {
            let roles = api
                .get(&[&org_path[..], &["roles"]].concat(), &Query::new())
                .await?;
            if ctx.json {
                output::json(&roles);
            } else {
                output::items(
                    roles.as_array().map(Vec::as_slice).unwrap_or_default(),
                    ROLE_COLUMNS,
                );
            }
        }
        RoleCmd::Grant {
            principal,
            role,
            project,
        } => {
            let body = CreateRoleBinding {
                principal,
                role,
                project,
            };
            let binding = api
                .post(&[&org_path[..], &["role-bindings"]].concat(), &body)
                .await?;
            output::show(ctx.json, &binding, BINDING_FIELDS);
        }
        RoleCmd::Revoke { binding_id } => {
            let path = [&org_path[..], &["role-bindings", binding_id.as_str()]].concat();
            api.delete(&path, None).await?;
            output::done(ctx.json, &format!("Revoked role binding {binding_id}."));
        }
        RoleCmd::Bindings { project, page } => {
            let path = match &project {
                Some(p) => [&org_path[..], &["projects", p.as_str(), "role-bindings"]].concat(),
                None => [&org_path[..], &["role-bindings"]].concat(),
            };
            let listing = api.list(&path, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, BINDING_COLUMNS);
        }
    }
    Ok(exit::OK)
}
