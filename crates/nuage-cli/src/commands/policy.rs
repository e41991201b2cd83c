//! Custom Cedar policies, and a dry run of the authorizer (`policy test`)
//! whose exit status lets scripts assert access rules.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nuage_core::model::{CreatePolicy, PolicyDecision, PolicyTest, UpdatePolicy};

use super::{IfMatch, OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// List custom policies.
    List(PageArgs),
    /// Add a Cedar policy (permit or forbid) to the organization.
    Create {
        name: String,
        /// The Cedar text (`-` reads stdin).
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show a policy and its Cedar text.
    Show { name: String },
    /// Replace a policy's text or description.
    Update {
        name: String,
        /// The new Cedar text (`-` reads stdin).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Delete a policy.
    Delete { name: String },
    /// Would PRINCIPAL be allowed ACTION on RESOURCE, and by which policy?
    ///
    /// Prints "allow" or "deny", the deciding policies and the principal's
    /// roles. Exit status: 0 for allow, 3 for deny (1 if the test itself
    /// failed), so scripts can assert access rules.
    Test {
        /// `user:<name>`, `service-account:<name>` or a principal id.
        #[arg(long)]
        principal: String,
        /// An action such as `project.get`.
        #[arg(long)]
        action: String,
        /// `org`, or `project:<name>`.
        #[arg(long)]
        resource: String,
        /// Evaluate as if the session had passed a second factor.
        #[arg(long)]
        mfa: bool,
        /// Source address to evaluate with (server default: 127.0.0.1).
        #[arg(long, value_name = "IP")]
        source_ip: Option<String>,
    },
}

const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("DESCRIPTION", "description"),
    ("ID", "id"),
    ("UPDATED", "updated_at"),
];

const FIELDS: &[Field] = &[
    ("name", "name"),
    ("id", "id"),
    ("description", "description"),
    ("generation", "generation"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

fn read_source(path: &Path) -> Result<String> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("could not read the policy from stdin")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?
    };
    if text.trim().is_empty() {
        bail!("the policy text is empty");
    }
    Ok(text)
}

pub async fn run(ctx: &mut Ctx, args: PolicyArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "policies"];
    let policy = match args.cmd {
        PolicyCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
            return Ok(exit::OK);
        }
        PolicyCmd::Create {
            name,
            file,
            description,
        } => {
            let body = CreatePolicy {
                name,
                description: description.unwrap_or_default(),
                body: read_source(&file)?,
            };
            api.post(&base, &body).await?
        }
        PolicyCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        PolicyCmd::Update {
            name,
            file,
            description,
            if_match,
        } => {
            let body = UpdatePolicy {
                description,
                body: file.as_deref().map(read_source).transpose()?,
            };
            if body.description.is_none() && body.body.is_none() {
                bail!("nothing to change: pass --file or --description");
            }
            let path = [&base[..], &[name.as_str()]].concat();
            api.patch(&path, &body, if_match.if_match).await?
        }
        PolicyCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted policy {name}."));
            return Ok(exit::OK);
        }
        PolicyCmd::Test {
            principal,
            action,
            resource,
            mfa,
            source_ip,
        } => {
            let body = PolicyTest {
                principal,
                action,
                resource,
                mfa,
                source_ip,
            };
            let path = ["v1", "orgs", org.as_str(), "policy-test"];
            let answer = api.post(&path, &body).await?;
            let decision: PolicyDecision = serde_json::from_value(answer.clone())
                .context("the server answered the test with an unexpected body")?;
            if ctx.json {
                output::json(&answer);
            } else {
                print_decision(&decision);
            }
            return Ok(if decision.decision == "allow" {
                exit::OK
            } else {
                exit::DENY
            });
        }
    };
    if ctx.json {
        output::json(&policy);
    } else {
        output::show(false, &policy, FIELDS);
        println!();
        println!("{}", output::text(&policy, "body").trim_end());
    }
    Ok(exit::OK)
}

fn print_decision(d: &PolicyDecision) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    println!("{}", d.decision);
    if d.policies.is_empty() && d.decision != "allow" {
        println!("decided by: nothing permits it (deny by default)");
    } else {
        println!("decided by: {}", list(&d.policies));
    }
    println!("roles:      {}", list(&d.roles));
}
