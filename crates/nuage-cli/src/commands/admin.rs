//! Platform operation through the operator API (the admin listener):
//! organizations and their quotas, operators, operator tokens, and the
//! operator's own second factor and password.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nuage_core::model::{
    CreateOperator, CreateOrg, CreateToken, OrgCreated, OwnerSpec, UpdateOrgQuota,
};

use super::auth::{MfaCmd, PasswordArgs};
use super::{org, principal, token, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::output::{self, Field};
use crate::{exit, secret};

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Debug, Subcommand)]
enum AdminCmd {
    /// Manage organizations.
    #[command(subcommand)]
    Org(AdminOrgCmd),
    /// Manage platform operators.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Manage your operator API tokens.
    #[command(subcommand)]
    Token(AdminTokenCmd),
    /// Enrol a TOTP second factor (operators need one to log in with a password).
    #[command(subcommand)]
    Mfa(MfaCmd),
    /// Change your operator password.
    Password(PasswordArgs),
    /// Compute nodes: capacity, use and overcommit.
    #[command(subcommand)]
    Node(super::node::NodeCmd),
    /// Define the instance types tenants create instances with.
    #[command(subcommand)]
    InstanceType(super::instance_type::AdminInstanceTypeCmd),
    /// Show whether the server is sealed (no login needed).
    SealStatus,
    /// Unseal a server started with --seal passphrase (no login needed: the
    /// passphrase is asked on the terminal, or read from stdin).
    Unseal {
        /// Read the passphrase from the first line of stdin.
        #[arg(long)]
        passphrase_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminOrgCmd {
    /// List every organization.
    List(PageArgs),
    /// Create an organization with its first owner.
    ///
    /// Without --owner-password-stdin the owner gets no password and an API
    /// token of the owner is printed, once.
    Create {
        name: String,
        /// Name of the first owner (a user of the new organization).
        #[arg(long)]
        owner: String,
        #[arg(long)]
        owner_email: Option<String>,
        /// Read the owner's initial password from the first line of stdin.
        #[arg(long)]
        owner_password_stdin: bool,
        #[arg(long)]
        display_name: Option<String>,
        /// Most projects the organization may hold.
        #[arg(long)]
        max_projects: Option<i64>,
    },
    /// Show an organization.
    Show { name: String },
    /// Set the most projects an organization may hold.
    SetQuota { name: String, max_projects: i64 },
    /// Delete an organization that holds no project.
    Delete { name: String },
    /// Set a project's object storage quota (over all its buckets; no
    /// limit given: none).
    SetStorageQuota {
        name: String,
        project: String,
        #[arg(long)]
        max_bytes: Option<i64>,
        #[arg(long)]
        max_objects: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCmd {
    /// List operators.
    List(PageArgs),
    /// Create an operator (password asked twice, or one line from stdin).
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an operator.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum AdminTokenCmd {
    /// List operator tokens.
    List(PageArgs),
    /// Create an operator API token; its secret is printed once.
    Create {
        name: String,
        /// Lifetime in seconds (server default: 90 days; at most a year).
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<i64>,
    },
    /// Revoke an operator token.
    Revoke { id: String },
}

const OPERATOR_COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("EMAIL", "email"),
    ("MFA", "mfa_enabled"),
    ("ID", "id"),
    ("CREATED", "created_at"),
];

pub async fn run(ctx: &mut Ctx, args: AdminArgs) -> Result<u8> {
    match args.cmd {
        AdminCmd::Org(cmd) => orgs(ctx, cmd).await,
        AdminCmd::Operator(cmd) => operators(ctx, cmd).await,
        AdminCmd::Token(cmd) => tokens(ctx, cmd).await,
        AdminCmd::Mfa(cmd) => super::auth::mfa(ctx, Realm::Admin, cmd).await,
        AdminCmd::Password(a) => super::auth::password(ctx, Realm::Admin, a).await,
        AdminCmd::Node(cmd) => super::node::run(ctx, cmd).await,
        AdminCmd::InstanceType(cmd) => super::instance_type::admin(ctx, cmd).await,
        AdminCmd::SealStatus => seal(ctx, None).await,
        AdminCmd::Unseal { passphrase_stdin } => {
            let p = crate::secret::obtain(passphrase_stdin, "Unseal passphrase", false)?;
            seal(ctx, Some(p)).await
        }
    }
}

async fn seal(ctx: &mut Ctx, passphrase: Option<String>) -> Result<u8> {
    let api = crate::client::Api::new(
        &ctx.url_or_default(Realm::Admin),
        None,
        ctx.config.ca_cert.as_deref(),
        true,
    )?;
    let answer = match passphrase {
        None => {
            api.get(&["admin", "v1", "seal-status"], &Query::new())
                .await?
        }
        Some(p) => {
            api.post(
                &["admin", "v1", "unseal"],
                &nuage_core::model::kms::UnsealRequest { passphrase: p },
            )
            .await?
        }
    };
    output::show(
        ctx.json,
        &answer,
        &[("sealed", "sealed"), ("method", "method")],
    );
    Ok(exit::OK)
}

async fn orgs(ctx: &mut Ctx, cmd: AdminOrgCmd) -> Result<u8> {
    let api = ctx.api(Realm::Admin)?;
    let base = ["admin", "v1", "orgs"];
    let answer = match cmd {
        AdminOrgCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, org::COLUMNS);
            return Ok(exit::OK);
        }
        AdminOrgCmd::Create {
            name,
            owner,
            owner_email,
            owner_password_stdin,
            display_name,
            max_projects,
        } => {
            let password = if owner_password_stdin {
                Some(secret::stdin_line()?)
            } else {
                None
            };
            let body = CreateOrg {
                name,
                display_name: display_name.unwrap_or_default(),
                max_projects,
                owner: OwnerSpec {
                    name: owner,
                    email: owner_email.unwrap_or_default(),
                    password,
                },
            };
            let answer = api.post(&base, &body).await?;
            if ctx.json {
                output::json(&answer);
                if answer.get("owner_token").is_some_and(|t| !t.is_null()) {
                    eprintln!("Copy the owner's token secret now: it will not be shown again.");
                }
                return Ok(exit::OK);
            }
            let created: OrgCreated = serde_json::from_value(answer.clone())
                .context("the server answered with an unexpected body")?;
            let mut shown = answer.get("org").cloned().unwrap_or_default();
            if let serde_json::Value::Object(map) = &mut shown {
                map.insert("owner".into(), created.owner.name.clone().into());
            }
            let fields: Vec<Field> = org::FIELDS
                .iter()
                .copied()
                .chain([("owner", "owner")])
                .collect();
            output::show(false, &shown, &fields);
            if let Some(owner_token) = answer.get("owner_token").filter(|t| !t.is_null()) {
                println!();
                println!(
                    "Owner token (log in with `nuage login --org {} --token <SECRET>`):",
                    created.org.name
                );
                token::show_secret(false, owner_token)?;
            }
            return Ok(exit::OK);
        }
        AdminOrgCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        AdminOrgCmd::SetQuota { name, max_projects } => {
            let path = [&base[..], &[name.as_str()]].concat();
            api.patch(&path, &UpdateOrgQuota { max_projects }, None)
                .await?
        }
        AdminOrgCmd::SetStorageQuota {
            name,
            project,
            max_bytes,
            max_objects,
        } => {
            let path = [
                &base[..],
                &[name.as_str(), "projects", project.as_str(), "storage-quota"],
            ]
            .concat();
            let quota = serde_json::json!({ "max_bytes": max_bytes, "max_objects": max_objects });
            let s = api.put(&path, &super::bucket::strip_nulls(quota)).await?;
            output::show(
                ctx.json,
                &s,
                &[("max bytes", "max_bytes"), ("max objects", "max_objects")],
            );
            return Ok(exit::OK);
        }
        AdminOrgCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted organization {name}."));
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, org::FIELDS);
    Ok(exit::OK)
}

async fn operators(ctx: &mut Ctx, cmd: OperatorCmd) -> Result<u8> {
    let api = ctx.api(Realm::Admin)?;
    let base = ["admin", "v1", "operators"];
    match cmd {
        OperatorCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, OPERATOR_COLUMNS);
        }
        OperatorCmd::Create {
            name,
            email,
            password_stdin,
        } => {
            let password = secret::obtain(password_stdin, "Password", true)?;
            let body = CreateOperator {
                name,
                email: email.unwrap_or_default(),
                password,
            };
            let created = api.post(&base, &body).await?;
            if ctx.json {
                output::json(&created);
                return Ok(exit::OK);
            }
            output::show(false, &created["operator"], principal::FIELDS);
            println!();
            println!(
                "Enrolment token (valid one day; the new operator runs `nuage login --admin --token <SECRET>` \
                 then `nuage admin mfa enroll`):"
            );
            token::show_secret(false, &created["enrollment_token"])?;
        }
        OperatorCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted operator {name}."));
        }
    }
    Ok(exit::OK)
}

async fn tokens(ctx: &mut Ctx, cmd: AdminTokenCmd) -> Result<u8> {
    let api = ctx.api(Realm::Admin)?;
    let base = ["admin", "v1", "tokens"];
    match cmd {
        AdminTokenCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, token::COLUMNS);
        }
        AdminTokenCmd::Create { name, ttl } => {
            let body = CreateToken {
                name,
                principal: None,
                ttl_seconds: ttl,
            };
            let answer = api.post(&base, &body).await?;
            token::show_secret(ctx.json, &answer)?;
        }
        AdminTokenCmd::Revoke { id } => {
            let revoked = api
                .delete(&[&base[..], &[id.as_str()]].concat(), None)
                .await?;
            if ctx.json {
                output::json(&revoked);
            } else {
                println!("Revoked token {id}.");
            }
        }
    }
    Ok(exit::OK)
}
