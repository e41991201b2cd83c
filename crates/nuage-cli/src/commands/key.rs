//! Project keys and the external key managers that can hold them. Rotation
//! with `--rewrap` re-wraps every stored data key in batches and shows its
//! progress; immediate destruction asks for the key's name as confirmation.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Args, Subcommand};
use nuage_core::model::kms::{
    CreateKey, CreateKeyManager, DecryptRequest, EncryptRequest, ExternalKeyRef, Justification,
    KeyManagerKind, KmipEndpoint, RewrapRequest, RotateKey, ScheduleDestruction, TransitEndpoint,
    UpdateKey,
};
use serde_json::{json, Value};

use super::{IfMatch, OrgFlag, PageArgs};
use crate::client::{Api, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(flatten)]
    org: OrgFlag,
    /// Project holding the keys.
    #[arg(long, short = 'p', global = true, env = "NUAGE_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    cmd: KeyCmd,
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// List the project's keys.
    List(PageArgs),
    /// Create a key (held by nuage, or on an external key manager).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Hold the key on this external key manager …
        #[arg(long, requires = "external_key_id")]
        manager: Option<String>,
        /// … under this id (KMIP unique identifier or Transit key name).
        #[arg(long, requires = "manager")]
        external_key_id: Option<String>,
        /// Accept only these purposes (repeatable): tenant_request,
        /// service_for_principal, rewrap, backup, operator_break_glass.
        #[arg(long = "allow", value_name = "PURPOSE", value_parser = parse_purpose)]
        allow: Vec<Justification>,
    },
    /// Show a key and its versions.
    Show { name: String },
    /// Change a key's description or accepted purposes.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Accept only these purposes (repeatable).
        #[arg(long = "allow", value_name = "PURPOSE", value_parser = parse_purpose)]
        allow: Vec<Justification>,
        /// Accept no purpose at all (every use is refused).
        #[arg(long, conflicts_with_all = ["allow", "allow_all"])]
        deny_all: bool,
        /// Accept every purpose.
        #[arg(long, conflicts_with = "allow")]
        allow_all: bool,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Add a key version used for new data; old versions still decrypt.
    Rotate {
        name: String,
        /// For an external key: the id of the new key on its manager.
        #[arg(long)]
        external_key_id: Option<String>,
        /// Then re-wrap every stored data key under the new version.
        #[arg(long)]
        rewrap: bool,
    },
    /// Re-wrap stored data keys under the newest version.
    Rewrap { name: String },
    /// Make a key unusable until enabled again.
    Disable { name: String },
    /// Make a disabled key usable again.
    Enable { name: String },
    /// Destroy a key after a waiting period, or at once with --now.
    Destroy {
        name: String,
        /// Waiting period in days (1-365).
        #[arg(long, default_value_t = 7, conflicts_with = "now")]
        days: u32,
        /// Destroy at once (needs a session opened with a second factor).
        #[arg(long)]
        now: bool,
        /// Confirm with the key's name instead of being asked.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Cancel a scheduled destruction (the key stays disabled).
    CancelDestruction { name: String },
    /// Encrypt data (a file, or stdin) with a key; prints the base64 envelope.
    Encrypt {
        name: String,
        #[arg(long, default_value = "-")]
        input: String,
        /// Associated data the decryption must repeat.
        #[arg(long)]
        aad: Option<String>,
    },
    /// Decrypt a base64 envelope (a file, or stdin); writes the plaintext.
    Decrypt {
        name: String,
        #[arg(long, default_value = "-")]
        input: String,
        #[arg(long)]
        aad: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct KeyManagerArgs {
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: ManagerCmd,
}

#[derive(Debug, Subcommand)]
enum ManagerCmd {
    /// List the organization's external key managers.
    List(PageArgs),
    /// Register a KMIP server (mutual TLS).
    CreateKmip {
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5696)]
        port: u16,
        #[arg(long)]
        server_name: Option<String>,
        /// PEM file of the CA that signs the server certificate.
        #[arg(long)]
        ca: String,
        /// PEM file of nuage's client certificate.
        #[arg(long)]
        client_cert: String,
        /// PEM file of the client certificate's private key.
        #[arg(long)]
        client_key: String,
    },
    /// Register an OpenBao or Vault Transit engine; the token is read from
    /// the first line of stdin.
    CreateTransit {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long, default_value = "transit")]
        mount: String,
        #[arg(long)]
        ca: Option<String>,
    },
    /// Show a key manager.
    Show { name: String },
    /// Delete a key manager no key uses.
    Delete {
        name: String,
        #[command(flatten)]
        if_match: IfMatch,
    },
}

pub const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("VERSION", "primary_version"),
    ("MANAGER", "manager"),
    ("ID", "id"),
];

pub const FIELDS: &[Field] = &[
    ("name", "name"),
    ("id", "id"),
    ("state", "state"),
    ("primary version", "primary_version"),
    ("manager", "manager"),
    ("purposes", "allowed_justifications"),
    ("destroy at", "destroy_at"),
    ("description", "description"),
    ("generation", "generation"),
    ("created", "created_at"),
];

const MANAGER_COLUMNS: &[Field] = &[("NAME", "name"), ("KIND", "kind"), ("ID", "id")];
const MANAGER_FIELDS: &[Field] = &[
    ("name", "name"),
    ("id", "id"),
    ("kind", "kind"),
    ("kmip host", "kmip.host"),
    ("kmip port", "kmip.port"),
    ("transit", "transit.address"),
    ("created", "created_at"),
];

fn parse_purpose(s: &str) -> Result<Justification, String> {
    Justification::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Justification::ALL.iter().map(|j| j.as_str()).collect();
        format!("unknown purpose {s:?}; one of {}", all.join(", "))
    })
}

fn read_input(input: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if input == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("could not read stdin")?;
    } else {
        buf = std::fs::read(input).with_context(|| format!("could not read {input}"))?;
    }
    Ok(buf)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn read_pem(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("could not read {path}"))
}

/// Calls rewrap until no data key is left under an older version,
/// reporting progress on stderr.
async fn rewrap_all(api: &Api, path: &[&str], json_out: bool) -> Result<Value> {
    let mut total = 0u64;
    loop {
        let r = api.post(path, &RewrapRequest { limit: Some(1000) }).await?;
        let done = r.get("rewrapped").and_then(Value::as_u64).unwrap_or(0);
        let left = r.get("remaining").and_then(Value::as_u64).unwrap_or(0);
        total += done;
        if !json_out {
            let all = total + left;
            let pct = (total * 100).checked_div(all).unwrap_or(100);
            eprint!("\rre-wrapping data keys: {total}/{all} ({pct} %)");
            if left == 0 || done == 0 {
                eprintln!();
            }
        }
        if left == 0 || done == 0 {
            return Ok(json!({
                "rewrapped": total,
                "remaining": left,
                "primary_version": r.get("primary_version").cloned().unwrap_or(Value::Null),
            }));
        }
    }
}

pub async fn run(ctx: &mut Ctx, args: KeyArgs) -> Result<u8> {
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
        "keys",
    ];
    let at = |name: &str, action: Option<&str>| -> Vec<String> {
        let mut p: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        p.push(name.to_string());
        if let Some(a) = action {
            p.push(a.to_string());
        }
        p
    };
    let answer = match args.cmd {
        KeyCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
            return Ok(exit::OK);
        }
        KeyCmd::Create {
            name,
            description,
            manager,
            external_key_id,
            allow,
        } => {
            let body = CreateKey {
                name,
                description: description.unwrap_or_default(),
                external: manager
                    .zip(external_key_id)
                    .map(|(manager, key_id)| ExternalKeyRef { manager, key_id }),
                allowed_justifications: (!allow.is_empty()).then_some(allow),
            };
            api.post(&base, &body).await?
        }
        KeyCmd::Show { name } => api.get(&refs(&at(&name, None)), &Query::new()).await?,
        KeyCmd::Update {
            name,
            description,
            allow,
            deny_all,
            allow_all,
            if_match,
        } => {
            if description.is_none() && allow.is_empty() && !deny_all && !allow_all {
                bail!("nothing to change: pass --description, --allow, --deny-all or --allow-all");
            }
            let body = UpdateKey {
                description,
                allowed_justifications: if deny_all {
                    Some(Vec::new())
                } else {
                    (!allow.is_empty()).then_some(allow)
                },
                allow_all_justifications: allow_all,
            };
            api.patch(&refs(&at(&name, None)), &body, if_match.if_match)
                .await?
        }
        KeyCmd::Rotate {
            name,
            external_key_id,
            rewrap,
        } => {
            let key = api
                .post(
                    &refs(&at(&name, Some("rotate"))),
                    &RotateKey { external_key_id },
                )
                .await?;
            if rewrap {
                let progress =
                    rewrap_all(&api, &refs(&at(&name, Some("rewrap"))), ctx.json).await?;
                if ctx.json {
                    output::json(&json!({"key": key, "rewrap": progress}));
                    return Ok(exit::OK);
                }
            }
            key
        }
        KeyCmd::Rewrap { name } => {
            let progress = rewrap_all(&api, &refs(&at(&name, Some("rewrap"))), ctx.json).await?;
            if ctx.json {
                output::json(&progress);
            } else {
                output::done(
                    false,
                    &format!(
                        "Re-wrapped {} data key(s) under version {}.",
                        progress["rewrapped"], progress["primary_version"]
                    ),
                );
            }
            return Ok(exit::OK);
        }
        KeyCmd::Disable { name } => api.post_empty(&refs(&at(&name, Some("disable")))).await?,
        KeyCmd::Enable { name } => api.post_empty(&refs(&at(&name, Some("enable")))).await?,
        KeyCmd::CancelDestruction { name } => {
            api.post_empty(&refs(&at(&name, Some("cancel-destruction"))))
                .await?
        }
        KeyCmd::Destroy {
            name,
            days,
            now,
            confirm,
        } => {
            if now {
                let confirm = match confirm {
                    Some(c) => c,
                    None if std::io::stdin().is_terminal() => {
                        eprint!(
                            "Destroying key {name:?} now makes everything it protects unreadable, \
                             for ever.\nType the key's name to confirm: "
                        );
                        std::io::stderr().flush().ok();
                        crate::secret::stdin_line()?
                    }
                    None => bail!("pass --confirm <key name> to destroy a key at once"),
                };
                api.post(
                    &refs(&at(&name, Some("destroy"))),
                    &json!({ "confirm": confirm }),
                )
                .await?
            } else {
                api.post(
                    &refs(&at(&name, Some("schedule-destruction"))),
                    &ScheduleDestruction { days: Some(days) },
                )
                .await?
            }
        }
        KeyCmd::Encrypt { name, input, aad } => {
            let data = read_input(&input)?;
            let r = api
                .post(
                    &refs(&at(&name, Some("encrypt"))),
                    &EncryptRequest {
                        plaintext: B64.encode(&data),
                        aad: aad.map(|a| B64.encode(a)),
                    },
                )
                .await?;
            if ctx.json {
                output::json(&r);
            } else {
                println!("{}", output::text(&r, "ciphertext"));
            }
            return Ok(exit::OK);
        }
        KeyCmd::Decrypt { name, input, aad } => {
            let data = read_input(&input)?;
            let text = String::from_utf8(data).context("the envelope must be base64 text")?;
            let r = api
                .post(
                    &refs(&at(&name, Some("decrypt"))),
                    &DecryptRequest {
                        ciphertext: text.trim().to_string(),
                        aad: aad.map(|a| B64.encode(a)),
                    },
                )
                .await?;
            if ctx.json {
                output::json(&r);
            } else {
                let pt = B64
                    .decode(output::text(&r, "plaintext"))
                    .context("the server answered invalid base64")?;
                std::io::stdout().write_all(&pt)?;
            }
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, FIELDS);
    Ok(exit::OK)
}

pub async fn run_managers(ctx: &mut Ctx, args: KeyManagerArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let base = ["v1", "orgs", org.as_str(), "key-managers"];
    let answer = match args.cmd {
        ManagerCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, MANAGER_COLUMNS);
            return Ok(exit::OK);
        }
        ManagerCmd::CreateKmip {
            name,
            host,
            port,
            server_name,
            ca,
            client_cert,
            client_key,
        } => {
            let body = CreateKeyManager {
                name,
                kind: KeyManagerKind::Kmip,
                kmip: Some(KmipEndpoint {
                    host,
                    port,
                    server_name,
                    ca_pem: read_pem(&ca)?,
                    client_cert_pem: read_pem(&client_cert)?,
                }),
                kmip_client_key_pem: Some(read_pem(&client_key)?),
                transit: None,
                transit_token: None,
            };
            api.post(&base, &body).await?
        }
        ManagerCmd::CreateTransit {
            name,
            address,
            mount,
            ca,
        } => {
            let token = crate::secret::stdin_line()?;
            let body = CreateKeyManager {
                name,
                kind: KeyManagerKind::Transit,
                kmip: None,
                kmip_client_key_pem: None,
                transit: Some(TransitEndpoint {
                    address,
                    mount,
                    ca_pem: ca.as_deref().map(read_pem).transpose()?,
                }),
                transit_token: Some(token),
            };
            api.post(&base, &body).await?
        }
        ManagerCmd::Show { name } => {
            api.get(&[&base[..], &[name.as_str()]].concat(), &Query::new())
                .await?
        }
        ManagerCmd::Delete { name, if_match } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), if_match.if_match)
                .await?;
            output::done(ctx.json, &format!("Deleted key manager {name}."));
            return Ok(exit::OK);
        }
    };
    output::show(ctx.json, &answer, MANAGER_FIELDS);
    Ok(exit::OK)
}
