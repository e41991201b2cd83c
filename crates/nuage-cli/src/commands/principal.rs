//! Users and service accounts: both are principals of the organization and
//! share a resource shape, so they share views.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nuage_core::model::{CreateServiceAccount, CreateUser, SetPassword, UpdatePrincipal};

use super::{IfMatch, OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::output::{self, Field};
use crate::{exit, secret};

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: UserCmd,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// List users.
    List(PageArgs),
    /// Create a user (without --password-stdin, the user has no password
    /// until one is set with `set-password`).
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        /// Read the initial password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show a user.
    Show { name: String },
    /// Change a user's display name, email or description.
    Update {
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Delete a user.
    Delete { name: String },
    /// Set a user's password (asked twice, or one line from stdin).
    SetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user's second factor so they can enrol a new one.
    ResetMfa { name: String },
}

#[derive(Debug, Args)]
pub struct ServiceAccountArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: ServiceAccountCmd,
}

#[derive(Debug, Subcommand)]
enum ServiceAccountCmd {
    /// List service accounts.
    List(PageArgs),
    /// Create a service account (give it a token with `nuage token create
    /// NAME --principal service-account:<name>`).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show a service account.
    Show { name: String },
    /// Change a service account's description or display name.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Delete a service account.
    Delete { name: String },
}

pub const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("DISPLAY NAME", "display_name"),
    ("EMAIL", "email"),
    ("MFA", "mfa_enabled"),
    ("ID", "id"),
    ("CREATED", "created_at"),
];

const SA_COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("DESCRIPTION", "description"),
    ("ID", "id"),
    ("CREATED", "created_at"),
];

pub const FIELDS: &[Field] = &[
    ("name", "name"),
    ("kind", "kind"),
    ("id", "id"),
    ("display name", "display_name"),
    ("email", "email"),
    ("description", "description"),
    ("password set", "has_password"),
    ("second factor", "mfa_enabled"),
    ("locked until", "locked_until"),
    ("generation", "generation"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

fn update_body(
    email: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
) -> Result<UpdatePrincipal> {
    if email.is_none() && display_name.is_none() && description.is_none() {
        bail!("nothing to change: pass at least one field to update");
    }
    Ok(UpdatePrincipal {
        display_name,
        email,
        description,
    })
}

pub async fn run_users(ctx: &mut Ctx, args: UserArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "users"];
    let answer = match args.cmd {
        UserCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
            return Ok(exit::OK);
        }
        UserCmd::Create {
            name,
            email,
            display_name,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(secret::stdin_line()?)
            } else {
                None
            };
            let body = CreateUser {
                name,
                display_name: display_name.unwrap_or_default(),
                email: email.unwrap_or_default(),
                password,
            };
            api.post(&base, &body).await?
        }
        UserCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        UserCmd::Update {
            name,
            email,
            display_name,
            description,
            if_match,
        } => {
            let body = update_body(email, display_name, description)?;
            let path = [&base[..], &[name.as_str()]].concat();
            api.patch(&path, &body, if_match.if_match).await?
        }
        UserCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted user {name}."));
            return Ok(exit::OK);
        }
        UserCmd::SetPassword {
            name,
            password_stdin,
        } => {
            let password = secret::obtain(password_stdin, "New password", true)?;
            let path = [&base[..], &[name.as_str(), "password"]].concat();
            api.put(&path, &SetPassword { password }).await?;
            output::done(ctx.json, &format!("Password of {name} set."));
            return Ok(exit::OK);
        }
        UserCmd::ResetMfa { name } => {
            let path = [&base[..], &[name.as_str(), "mfa"]].concat();
            api.delete(&path, None).await?;
            output::done(
                ctx.json,
                &format!("Second factor of {name} removed; they can enrol a new one."),
            );
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, FIELDS);
    Ok(exit::OK)
}

pub async fn run_service_accounts(ctx: &mut Ctx, args: ServiceAccountArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "service-accounts"];
    let answer = match args.cmd {
        ServiceAccountCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, SA_COLUMNS);
            return Ok(exit::OK);
        }
        ServiceAccountCmd::Create { name, description } => {
            let body = CreateServiceAccount {
                name,
                description: description.unwrap_or_default(),
            };
            api.post(&base, &body).await?
        }
        ServiceAccountCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        ServiceAccountCmd::Update {
            name,
            description,
            display_name,
            if_match,
        } => {
            let body = update_body(None, display_name, description)?;
            let path = [&base[..], &[name.as_str()]].concat();
            api.patch(&path, &body, if_match.if_match).await?
        }
        ServiceAccountCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted service account {name}."));
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, FIELDS);
    Ok(exit::OK)
}
