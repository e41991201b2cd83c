//! Projects. Label changes are merged into the current labels (the API
//! replaces the whole map) under `If-Match`, so a concurrent edit is refused
//! rather than silently overwritten.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nuage_core::model::{CreateProject, UpdateProject};
use serde_json::Value;

use super::{IfMatch, OrgFlag, PageArgs};
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: ProjectCmd,
}

#[derive(Debug, Subcommand)]
enum ProjectCmd {
    /// List projects.
    List(PageArgs),
    /// Create a project.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A label, as key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Show a project.
    Show { name: String },
    /// Change a project's description or labels.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Set a label, as key=value (repeatable; other labels are kept).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove a label (repeatable).
        #[arg(long = "remove-label", value_name = "KEY")]
        remove_labels: Vec<String>,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Delete a project.
    Delete {
        name: String,
        #[command(flatten)]
        if_match: IfMatch,
    },
}

pub const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("DESCRIPTION", "description"),
    ("LABELS", "labels"),
    ("ID", "id"),
    ("CREATED", "created_at"),
];

pub const FIELDS: &[Field] = &[
    ("name", "name"),
    ("id", "id"),
    ("description", "description"),
    ("labels", "labels"),
    ("generation", "generation"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

/// Parses `key=value`; the value may be empty or contain `=`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("{s:?} is not key=value"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!("label key {key:?} contains whitespace"));
    }
    Ok((key.to_string(), value.to_string()))
}

fn labels_of(project: &Value) -> BTreeMap<String, String> {
    project
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(ctx: &mut Ctx, args: ProjectArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "projects"];
    let answer = match args.cmd {
        ProjectCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
            return Ok(exit::OK);
        }
        ProjectCmd::Create {
            name,
            description,
            labels,
        } => {
            let body = CreateProject {
                name,
                description: description.unwrap_or_default(),
                labels: labels.into_iter().collect(),
            };
            api.post(&base, &body).await?
        }
        ProjectCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        ProjectCmd::Update {
            name,
            description,
            labels,
            remove_labels,
            if_match,
        } => {
            let path = [&base[..], &[name.as_str()]].concat();
            let mut generation = if_match.if_match;
            let new_labels = if labels.is_empty() && remove_labels.is_empty() {
                None
            } else {
                let current = api.get(&path, &Query::new()).await?;
                generation =
                    generation.or_else(|| current.get("generation").and_then(Value::as_i64));
                let mut merged = labels_of(&current);
                for key in &remove_labels {
                    merged.remove(key);
                }
                merged.extend(labels);
                Some(merged)
            };
            if description.is_none() && new_labels.is_none() {
                bail!("nothing to change: pass --description, --label or --remove-label");
            }
            let body = UpdateProject {
                description,
                labels: new_labels,
            };
            api.patch(&path, &body, generation).await?
        }
        ProjectCmd::Delete { name, if_match } => {
            let path = [&base[..], &[name.as_str()]].concat();
            api.delete(&path, if_match.if_match).await?;
            output::done(ctx.json, &format!("Deleted project {name}."));
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
    fn labels() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
    }

    #[test]
    fn bad_labels() {
        let err = parse_label("env").unwrap_err();
        assert!(err.contains("key=value"), "{err}");
        assert!(parse_label("=prod").unwrap_err().contains("empty key"));
        assert!(parse_label("my key=v").unwrap_err().contains("whitespace"));
    }

    #[test]
    fn labels_from_a_project() {
        let p = serde_json::json!({"labels": {"env": "prod"}});
        assert_eq!(labels_of(&p).get("env").map(String::as_str), Some("prod"));
        assert!(labels_of(&serde_json::json!({})).is_empty());
    }
}
