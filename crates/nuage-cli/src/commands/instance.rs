//! Virtual machines of a project. The API takes changes at once (202) and
//! a node agent carries them out, so the commands that change an instance
//! can `--wait` for the outcome; `console` and `console-log` reach the
//! serial console.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::bucket::strip_nulls;
use super::{names_by_id, OrgFlag, PageArgs, WaitArgs};
use crate::client::{Api, Listing, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};
use crate::wait::{Goal, Wait};

#[derive(Debug, Args)]
pub struct InstanceArgs {
    #[command(flatten)]
    org: OrgFlag,
    /// Project holding the instances.
    #[arg(long, short = 'p', global = true, env = "NUAGE_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    cmd: InstanceCmd,
}

#[derive(Debug, Subcommand)]
enum InstanceCmd {
    /// List the project's instances.
    List(PageArgs),
    /// Create an instance and start it: a boot volume copied from the
    /// image, a size from --type or --vcpus/--memory.
    Create {
        /// Also the guest's hostname.
        name: String,
        /// The image (name or id in the project, or id of an image the
        /// organization shares).
        #[arg(long)]
        image: String,
        /// An instance type (see `nuage instance-type list`).
        #[arg(long = "type", value_name = "TYPE", conflicts_with_all = ["vcpus", "memory"])]
        instance_type: Option<String>,
        /// vCPUs (default 1).
        #[arg(long)]
        vcpus: Option<i64>,
        /// Memory: 512M, 2G, or a number of MiB (default 512M).
        #[arg(long)]
        memory: Option<String>,
        /// Boot disk size: 10G … (default: the image's size; never smaller).
        #[arg(long)]
        disk_size: Option<String>,
        /// An OpenSSH public key for the guest: a file (`~/.ssh/id_ed25519.pub`)
        /// or the key itself. Repeatable.
        #[arg(long = "ssh-key", value_name = "FILE_OR_KEY")]
        ssh_keys: Vec<String>,
        /// cloud-init user-data (`#cloud-config …` or a script), from a file.
        #[arg(long, value_name = "FILE")]
        user_data: Option<std::path::PathBuf>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show an instance and its volumes.
    Show { name: String },
    /// Delete an instance and its boot volume (other volumes are detached
    /// and stay).
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start a stopped instance.
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop an instance: ask the guest to power off (ACPI), or --force.
    Stop {
        name: String,
        /// Kill the VM at once instead of asking the guest.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Reset a running instance (like the reset button).
    Reboot { name: String },
    /// Print the end of the serial console's output.
    ConsoleLog {
        name: String,
        /// How many bytes from the end (default 64 KiB, at most 1 MiB).
        #[arg(long)]
        bytes: Option<u64>,
    },
    /// Connect to the serial console (leave with Ctrl-]). With stdin not a
    /// terminal, sends stdin as it is and shows the output.
    Console {
        name: String,
        /// After stdin ends, show the output this many seconds more, then
        /// close (default: until the server closes the console).
        #[arg(long = "for", value_name = "SECONDS")]
        linger: Option<u64>,
    },
}

/// `_memory` and `_image` are added for people (see [`for_people`]);
/// `--json` shows the API's answer untouched.
const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("VCPUS", "vcpus"),
    ("MEMORY", "_memory"),
    ("IMAGE", "_image"),
    ("NODE", "node_id"),
    ("CREATED", "created_at"),
];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("status", "status_message"),
    ("desired", "desired"),
    ("type", "instance_type"),
    ("vcpus", "vcpus"),
    ("memory", "_memory"),
    ("image", "_image"),
    ("boot volume", "_boot_volume"),
    ("volumes", "_volumes"),
    ("ssh keys", "_ssh_keys"),
    ("node", "node_id"),
    ("project", "project_id"),
    ("created by", "created_by"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

/// The instance with its memory readable, its image by name where the
/// project knows it, and its keys shortened to type and comment.
fn for_people(mut inst: Value, images: &HashMap<String, String>) -> Value {
    let memory = inst["memory_mib"]
        .as_u64()
        .map(|m| output::human_bytes(m << 20))
        .unwrap_or_default();
    let image = inst["image_id"]
        .as_str()
        .map(|id| images.get(id).cloned().unwrap_or_else(|| id.to_string()))
        .unwrap_or_default();
    let keys: Vec<Value> = inst["ssh_keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(Value::as_str)
                .map(|k| Value::String(short_key(k)))
                .collect()
        })
        .unwrap_or_default();
    if let Some(m) = inst.as_object_mut() {
        m.insert("_memory".into(), Value::String(memory));
        m.insert("_image".into(), Value::String(image));
        m.insert("_ssh_keys".into(), Value::Array(keys));
    }
    inst
}

/// `ssh-ed25519 AAAA… alice@laptop` as `ssh-ed25519 alice@laptop`.
fn short_key(key: &str) -> String {
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let _blob = parts.next();
    let comment = parts.collect::<Vec<_>>().join(" ");
    if comment.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} {comment}")
    }
}

/// Whether an `--ssh-key` value is a key rather than a file name.
fn is_key_text(s: &str) -> bool {
    let t = s.trim_start();
    ["ssh-", "ecdsa-", "sk-"].iter().any(|p| t.starts_with(p)) && t.contains(' ')
}

/// The public keys of the `--ssh-key` values: key texts as given, files
/// read (one key a line, `#` comments skipped). A private key is refused
/// before it goes anywhere.
fn ssh_keys(values: &[String]) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for v in values {
        if is_key_text(v) {
            keys.push(v.trim().to_string());
            continue;
        }
        let text = std::fs::read_to_string(Path::new(v)).with_context(|| {
            format!("--ssh-key {v}: neither an OpenSSH public key nor a readable file")
        })?;
        if text.contains("PRIVATE KEY") {
            bail!("{v} is a private key; give the public one ({v}.pub)");
        }
        let found: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        if found.is_empty() {
            bail!("{v} holds no public key");
        }
        keys.extend(found);
    }
    Ok(keys)
}

pub async fn run(ctx: &mut Ctx, args: InstanceArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    let org = ctx.org(&args.org.org)?;
    let project = super::project(&args.project)?;
    let base = [
        "v1",
        "orgs",
        org.as_str(),
        "projects",
        project.as_str(),
        "instances",
    ];
    let images = [&base[..5], &["images"]].concat();
    let at = |name: &str, tail: &[&str]| -> Vec<String> {
        base.iter()
            .copied()
            .chain([name])
            .chain(tail.iter().copied())
            .map(str::to_string)
            .collect()
    };
    let json_out = ctx.json;
    // Waits for instance `name` to reach `goal`.
    let wait_for = |name: String, goal: Goal, passing: &'static [&'static str], w: &WaitArgs| {
        let path = at(&name, &[]);
        let api = api.clone();
        let timeout = w.timeout();
        async move {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let what = format!("instance {name}");
            Wait {
                api: &api,
                path: &path,
                what: &what,
                goal,
                passing,
                timeout,
                show: !json_out,
            }
            .run()
            .await
        }
    };
    const UP: &[&str] = &["creating", "starting"];
    match args.cmd {
        InstanceCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            if ctx.json || listing.items.is_empty() {
                output::list(ctx.json, &listing, COLUMNS);
            } else {
                let names = names_by_id(&api, &images).await;
                let listing = Listing {
                    items: listing
                        .items
                        .into_iter()
                        .map(|i| for_people(i, &names))
                        .collect(),
                    ..listing
                };
                output::list(false, &listing, COLUMNS);
            }
        }
        InstanceCmd::Create {
            name,
            image,
            instance_type,
            vcpus,
            memory,
            disk_size,
            ssh_keys: key_args,
            user_data,
            wait,
        } => {
            let keys = ssh_keys(&key_args)?;
            let user_data = match user_data {
                Some(file) => Some(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("could not read {}", file.display()))?,
                ),
                None => None,
            };
            let body = strip_nulls(json!({
                "name": name,
                "image": image,
                "type": instance_type,
                "vcpus": vcpus,
                "memory": memory,
                "disk_size": disk_size,
                "ssh_keys": keys,
                "user_data": user_data,
            }));
            let mut inst = api.post(&base, &body).await?;
            if wait.wait {
                inst = wait_for(name, Goal::State("running"), UP, &wait).await?;
            }
            show(&api, ctx.json, inst, &images, None).await;
        }
        InstanceCmd::Show { name } => {
            let path = at(&name, &[]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let inst = api.get(&path, &Query::new()).await?;
            let vols = if ctx.json {
                None
            } else {
                let vpath = at(&name, &["volumes"]);
                let vpath: Vec<&str> = vpath.iter().map(String::as_str).collect();
                api.get(&vpath, &Query::new()).await.ok()
            };
            show(&api, ctx.json, inst, &images, vols).await;
        }
        InstanceCmd::Delete { name, wait } => {
            let path = at(&name, &[]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let inst = api.delete(&path, None).await?;
            if wait.wait {
                wait_for(name.clone(), Goal::Gone, &["deleting"], &wait).await?;
                output::done(ctx.json, &format!("Deleted instance {name}."));
            } else if ctx.json {
                output::json(&inst);
            } else {
                println!("Deleting instance {name}.");
            }
        }
        InstanceCmd::Start { name, wait } => {
            let path = at(&name, &["start"]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let inst = api.post_empty(&path).await?;
            let inst = if wait.wait {
                wait_for(name.clone(), Goal::State("running"), UP, &wait).await?
            } else {
                inst
            };
            changed(ctx.json, &inst, &name);
        }
        InstanceCmd::Stop { name, force, wait } => {
            let path = at(&name, &["stop"]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let inst = if force {
                api.post_query(&path, Query::new().set("force", "true"))
                    .await?
            } else {
                api.post_empty(&path).await?
            };
            let inst = if wait.wait {
                wait_for(name.clone(), Goal::State("stopped"), &["stopping"], &wait).await?
            } else {
                inst
            };
            changed(ctx.json, &inst, &name);
        }
        InstanceCmd::Reboot { name } => {
            let path = at(&name, &["reboot"]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let inst = api.post_empty(&path).await?;
            if ctx.json {
                output::json(&inst);
            } else {
                println!("Rebooting instance {name}.");
            }
        }
        InstanceCmd::ConsoleLog { name, bytes } => {
            let path = at(&name, &["console-log"]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let mut q = Query::new();
            q.opt("bytes", bytes);
            let log = api.get(&path, &q).await?;
            if ctx.json {
                output::json(&log);
            } else {
                let out = log["output"].as_str().unwrap_or("");
                print!("{out}");
                if !out.is_empty() && !out.ends_with('\n') {
                    println!();
                }
            }
        }
        InstanceCmd::Console { name, linger } => {
            let path = at(&name, &["console"]);
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            crate::console::run(&api, &path, &name, linger.map(Duration::from_secs)).await?;
        }
    }
    Ok(exit::OK)
}

/// An instance for people: a table with names where the API gives ids, and
/// its volumes when known; for scripts the API's answer.
async fn show(api: &Api, json_out: bool, inst: Value, images: &[&str], volumes: Option<Value>) {
    if json_out {
        output::json(&inst);
        return;
    }
    let names = names_by_id(api, images).await;
    let mut inst = for_people(inst, &names);
    let boot_id = inst["boot_volume_id"].clone();
    let vols: Vec<Value> = volumes
        .as_ref()
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let boot = vols
        .iter()
        .find(|v| v["id"] == boot_id)
        .map_or(boot_id.clone(), |v| v["name"].clone());
    if let Some(m) = inst.as_object_mut() {
        m.insert("_boot_volume".into(), boot);
        if volumes.is_some() {
            let names = vols.iter().map(|v| v["name"].clone()).collect();
            m.insert("_volumes".into(), Value::Array(names));
        }
    }
    output::show(false, &inst, FIELDS);
}

/// After start or stop: the instance's state now.
fn changed(json_out: bool, inst: &Value, name: &str) {
    if json_out {
        output::json(inst);
        return;
    }
    let state = inst["state"].as_str().unwrap_or("?");
    println!("Instance {name} is {state}.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_text_or_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKE test@nuage";
        let file = dir.path().join("id.pub");
        std::fs::write(&file, format!("# mine\n{key}\n\n")).unwrap();
        let file = file.to_str().unwrap().to_string();
        assert_eq!(
            ssh_keys(&[key.to_string(), file.clone()]).unwrap(),
            [key, key]
        );
        let private = dir.path().join("id");
        std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\n…\n").unwrap();
        let err = ssh_keys(&[private.to_str().unwrap().to_string()]).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        let err = ssh_keys(&["/nonexistent/id.pub".to_string()]).unwrap_err();
        assert!(format!("{err:#}").contains("neither"), "{err:#}");
    }

    #[test]
    fn instances_for_people() {
        let images = HashMap::from([("img_1".to_string(), "debian".to_string())]);
        let i = for_people(
            json!({"memory_mib": 256, "image_id": "img_1",
                   "ssh_keys": ["ssh-ed25519 AAAA alice@laptop", "ssh-rsa AAAA"]}),
            &images,
        );
        assert_eq!(i["_memory"], "256.0 MiB");
        assert_eq!(i["_image"], "debian");
        assert_eq!(
            output::text(&i, "_ssh_keys"),
            "ssh-ed25519 alice@laptop, ssh-rsa"
        );
    }
}
