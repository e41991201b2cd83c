//! Disk images of a project. An image is created by name, then its file
//! (qcow2 or raw) is streamed from the local disk; the server inspects it
//! and keeps it encrypted. Volumes start from images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::{OrgFlag, PageArgs};
use crate::client::{Api, ApiProblem, Listing, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};
use crate::progress::Meter;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    org: OrgFlag,
    /// Project holding the images.
    #[arg(long, short = 'p', global = true, env = "NUAGE_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    cmd: ImageCmd,
}

/// Who may use an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Visibility {
    /// Only its own project.
    Project,
    /// Every project of the organization (by the image's id).
    Org,
}

impl Visibility {
    fn as_str(self) -> &'static str {
        match self {
            Visibility::Project => "project",
            Visibility::Org => "org",
        }
    }
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// List the project's images.
    List(PageArgs),
    /// Create an image from a local qcow2 or raw disk file (streamed to the
    /// server, which checks it and stores it encrypted).
    Create {
        name: String,
        /// The disk: qcow2 without a backing or data file, or a raw disk.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Who may use the image.
        #[arg(long, value_enum, default_value_t = Visibility::Project)]
        visibility: Visibility,
    },
    /// Send the file of an image that has none yet, or whose file was refused.
    Upload {
        name: String,
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Show an image.
    Show { name: String },
    /// Let only the project, or every project of the organization, use the image.
    SetVisibility {
        name: String,
        #[arg(value_enum)]
        visibility: Visibility,
    },
    /// Delete an image no volume starts from.
    Delete { name: String },
}

/// `_size` is added for people (see [`for_people`]); `--json` shows the
/// API's answer untouched.
const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("FORMAT", "source_format"),
    ("SIZE", "_size"),
    ("VISIBILITY", "visibility"),
    ("CREATED", "created_at"),
];

const FIELDS: &[Field] = &[
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("status", "status_message"),
    ("format", "source_format"),
    ("size", "_size"),
    ("visibility", "visibility"),
    ("project", "project_id"),
    ("key id", "key_id"),
    ("created by", "created_by"),
    ("created", "created_at"),
    ("updated", "updated_at"),
];

/// The image with its disk size readable (`4.0 MiB`); with the exact byte
/// count too when `exact`. No size before the file is in.
fn for_people(mut image: Value, exact: bool) -> Value {
    let bytes = image["virtual_size"].as_u64().filter(|b| *b > 0);
    let size = match bytes {
        Some(b) if exact => format!("{} ({b} bytes)", output::human_bytes(b)),
        Some(b) => output::human_bytes(b),
        None => String::new(),
    };
    if let Some(m) = image.as_object_mut() {
        m.insert("_size".into(), Value::String(size));
    }
    image
}

fn show(json_out: bool, image: Value) {
    if json_out {
        output::json(&image);
    } else {
        output::show(false, &for_people(image, true), FIELDS);
    }
}

pub async fn run(ctx: &mut Ctx, args: ImageArgs) -> Result<u8> {
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
        "images",
    ];
    match args.cmd {
        ImageCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            let listing = Listing {
                items: listing
                    .items
                    .into_iter()
                    .map(|i| for_people(i, false))
                    .collect(),
                ..listing
            };
            output::list(ctx.json, &listing, COLUMNS);
        }
        ImageCmd::Create {
            name,
            file,
            visibility,
        } => {
            let (disk, len) = open_disk(&file).await?;
            api.post(
                &base,
                &json!({ "name": name, "visibility": visibility.as_str() }),
            )
            .await?;
            let path = [&base[..], &[name.as_str()]].concat();
            let image = send_file(ctx, &api, &path, &project, &name, disk, len).await?;
            show(ctx.json, image);
        }
        ImageCmd::Upload { name, file } => {
            let (disk, len) = open_disk(&file).await?;
            let path = [&base[..], &[name.as_str()]].concat();
            // The server refuses a second file before reading it; said here,
            // as a large upload would only see the connection close.
            let image = api.get(&path, &Query::new()).await?;
            if image["state"] == "available" {
                bail!(
                    "the image {name} already has its file (image_available); \
                     create a new image instead"
                );
            }
            let image = send_file(ctx, &api, &path, &project, &name, disk, len).await?;
            show(ctx.json, image);
        }
        ImageCmd::Show { name } => {
            let path = [&base[..], &[name.as_str()]].concat();
            let image = api.get(&path, &Query::new()).await?;
            show(ctx.json, image);
        }
        ImageCmd::SetVisibility { name, visibility } => {
            let path = [&base[..], &[name.as_str()]].concat();
            let image = api
                .patch(&path, &json!({ "visibility": visibility.as_str() }), None)
                .await?;
            show(ctx.json, image);
        }
        ImageCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted image {name}."));
        }
    }
    Ok(exit::OK)
}

/// Opens the disk before anything is created, so that a typo in the path
/// leaves no image behind. An empty file is no disk.
async fn open_disk(file: &Path) -> Result<(tokio::fs::File, u64)> {
    let disk = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("could not open {}", file.display()))?;
    let meta = disk
        .metadata()
        .await
        .with_context(|| format!("could not read {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", file.display());
    }
    if meta.len() == 0 {
        bail!("{} is empty", file.display());
    }
    Ok((disk, meta.len()))
}

/// Streams the disk with a meter; a refusal becomes one line that gives
/// the server's reason and what became of the image.
async fn send_file(
    ctx: &Ctx,
    api: &Api,
    path: &[&str],
    project: &str,
    name: &str,
    disk: tokio::fs::File,
    len: u64,
) -> Result<Value> {
    let meter = Meter::new(len, !ctx.json);
    let tick = meter.clone();
    let file_path = [path, &["file"]].concat();
    let sent = api
        .upload(&file_path, disk, len, move |n| tick.sent(n))
        .await;
    meter.finish();
    let err = match sent {
        Ok(image) => return Ok(image),
        Err(e) => e,
    };
    if err
        .downcast_ref::<ApiProblem>()
        .is_some_and(|p| p.status == 401)
    {
        return Err(err);
    }
    // What the server made of it: a refused file leaves the image `failed`
    // with the reason, which is also how a reason reaches us when the
    // server answered before taking the whole body and the connection broke.
    let image = api.get(path, &Query::new()).await.ok();
    let state = image
        .as_ref()
        .and_then(|i| i["state"].as_str())
        .unwrap_or("");
    let reason = image
        .as_ref()
        .and_then(|i| i["status_message"].as_str())
        .unwrap_or("");
    let what = if err.downcast_ref::<ApiProblem>().is_some() {
        format!("the upload was refused: {err:#}")
    } else if state == "failed" && !reason.is_empty() {
        format!("the upload was refused: {reason} ({err:#})")
    } else {
        format!("the upload failed: {err:#}")
    };
    let retry = format!(
        "upload another file with `nuage image upload {name} -p {project} --file FILE` \
         or remove it with `nuage image delete {name} -p {project}`"
    );
    match state {
        "failed" => bail!("{what}; the image {name} stays, failed with that reason: {retry}"),
        "uploading" => bail!("{what}; the image {name} still has no file: {retry}"),
        _ => bail!("{what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people_only_once_known() {
        let i = for_people(json!({"virtual_size": 4 << 20}), false);
        assert_eq!(i["_size"], "4.0 MiB");
        let i = for_people(json!({"virtual_size": 4 << 20}), true);
        assert_eq!(i["_size"], "4.0 MiB (4194304 bytes)");
        let i = for_people(json!({"virtual_size": 0}), false);
        assert_eq!(output::text(&i, "_size"), "-");
    }
}
