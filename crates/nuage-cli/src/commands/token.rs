//! API tokens. A token's secret is returned only when it is created, so
//! creation is the one place it is printed.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nuage_core::model::{CreateToken, TokenSecret};
use serde_json::Value;

use super::{OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// List tokens (yours, or a principal's with --principal).
    List {
        /// Only the tokens of this principal (`user:<name>`,
        /// `service-account:<name>` or an id).
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Create an API token; its secret is printed once.
    Create {
        name: String,
        /// Issue it to a service account (`service-account:<name>`) instead of yourself.
        #[arg(long)]
        principal: Option<String>,
        /// Lifetime in seconds (server default: 90 days; at most a year).
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<i64>,
    },
    /// Show a token.
    Show { id: String },
    /// Revoke a token; it stops working at once.
    Revoke { id: String },
}

pub const COLUMNS: &[Field] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("KIND", "kind"),
    ("PRINCIPAL", "principal_id"),
    ("MFA", "mfa"),
    ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"),
    ("REVOKED", "revoked_at"),
];

pub const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("kind", "kind"),
    ("principal", "principal_id"),
    ("passed second factor", "mfa"),
    ("created", "created_at"),
    ("expires", "expires_at"),
    ("last used", "last_used_at"),
    ("revoked", "revoked_at"),
];

/// Prints a newly created token with its secret, and the warning that it
/// cannot be retrieved again.
pub fn show_secret(json: bool, answer: &Value) -> Result<()> {
    if json {
        output::json(answer);
    } else {
        let created: TokenSecret = serde_json::from_value(answer.clone())
            .context("the server answered with an unexpected token body")?;
        let mut shown = answer.get("token").cloned().unwrap_or_default();
        if let Value::Object(map) = &mut shown {
            map.insert("secret".into(), Value::String(created.secret));
        }
        let fields: Vec<Field> = FIELDS
            .iter()
            .copied()
            .chain([("secret", "secret")])
            .collect();
        output::show(false, &shown, &fields);
    }
    eprintln!("Copy the secret now: it will not be shown again.");
    Ok(())
}

pub async fn run(ctx: &mut Ctx, args: TokenArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "tokens"];
    match args.cmd {
        TokenCmd::List { principal, page } => {
            let mut q = Query::new();
            q.opt("principal", principal);
            let listing = api.list(&base, &q, &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
        }
        TokenCmd::Create {
            name,
            principal,
            ttl,
        } => {
            let body = CreateToken {
                name,
                principal,
                ttl_seconds: ttl,
            };
            let answer = api.post(&base, &body).await?;
            show_secret(ctx.json, &answer)?;
        }
        TokenCmd::Show { id } => {
            let token = api
                .get(&[&base[..], &[id.as_str()]].concat(), &Query::new())
                .await?;
            output::show(ctx.json, &token, FIELDS);
        }
        TokenCmd::Revoke { id } => {
            let token = api
                .delete(&[&base[..], &[id.as_str()]].concat(), None)
                .await?;
            if ctx.json {
                output::json(&token);
            } else {
                println!("Revoked token {id}.");
            }
        }
    }
    Ok(exit::OK)
}
