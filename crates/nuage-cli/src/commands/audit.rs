//! The audit log: listing, signed checkpoints, exports and their offline
//! verification.
//!
//! Verification deliberately trusts only the verifier key the user supplies:
//! the export file is checked without the server, and when a previously saved
//! checkpoint is given, the server merely supplies a consistency proof that
//! is itself checked against both signed checkpoints. A lying server can make
//! verification fail, never pass.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use nuage_audit::merkle::parse_hex_hash;
use nuage_audit::note::NoteVerifier;
use nuage_audit::verify::{verify_consistency_between, verify_export, VerifyReport};
use nuage_core::model::{AuditCheckpoint, AuditProof, AuditPublicKey};
use serde_json::{json, Value};

use super::{OrgFlag, PageArgs};
use crate::client::{Api, Query};
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Work on the platform log through the operator API.
    #[arg(long, global = true)]
    admin: bool,
    #[command(flatten)]
    org: OrgFlag,
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Debug, Clone, Args)]
struct Filters {
    /// Only entries at or after this time (RFC 3339, e.g. 2025-01-31T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    since: Option<String>,
    /// Only entries before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    until: Option<String>,
    /// Only entries of this principal (its id).
    #[arg(long, value_name = "ID")]
    principal: Option<String>,
    /// Only entries of this action (e.g. `project.create`).
    #[arg(long)]
    action: Option<String>,
    /// Only entries with this decision.
    #[arg(long, value_parser = ["allow", "deny", "error", "none"])]
    decision: Option<String>,
}

impl Filters {
    fn query(&self) -> Query {
        let mut q = Query::new();
        q.opt("since", self.since.clone())
            .opt("until", self.until.clone())
            .opt("principal", self.principal.clone())
            .opt("action", self.action.clone())
            .opt("decision", self.decision.clone());
        q
    }
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// List audit entries, oldest first.
    List {
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show the newest signed checkpoint (the log's size and root hash).
    Checkpoint {
        /// Write the signed note to FILE, to verify later exports against it
        /// (`nuage audit verify --since-checkpoint FILE`).
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
        /// Sign a checkpoint of the log as it is now instead.
        #[arg(long, conflicts_with = "size")]
        new: bool,
        /// The checkpoint at this past size instead of the newest.
        #[arg(long)]
        size: Option<u64>,
    },
    /// Show the key that signs checkpoints, to keep for offline verification.
    PublicKey {
        /// Write the verifier key to FILE.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Export entries as JSON Lines, each with its inclusion proof.
    ///
    /// Without filters the export is complete: verification then also
    /// detects deleted entries.
    Export {
        #[command(flatten)]
        filters: Filters,
        /// Where to write the export (`-` for stdout).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify an export offline against the log's public key.
    ///
    /// Reports every altered, inserted, reordered or (for complete exports)
    /// missing entry with its line. With --since-checkpoint, also asks the
    /// server for a consistency proof and checks that the log in the export
    /// extends a checkpoint saved earlier (nothing was rewritten since).
    /// Exit status 1 when anything fails to verify.
    Verify {
        /// The export (JSON Lines) to check.
        #[arg(long, value_name = "EXPORT.jsonl")]
        file: PathBuf,
        /// The verifier key, or a file holding it (from `audit public-key --save`).
        #[arg(long, value_name = "KEYFILE_OR_KEY")]
        public_key: String,
        /// A checkpoint saved earlier with `audit checkpoint --save`.
        #[arg(long, value_name = "OLD_NOTE_FILE")]
        since_checkpoint: Option<PathBuf>,
    },
}

const ENTRY_COLUMNS: &[Field] = &[
    ("INDEX", "index"),
    ("TIME", "record.time"),
    ("PRINCIPAL", "record.principal_name"),
    ("ACTION", "record.action"),
    ("RESOURCE", "record.resource"),
    ("DECISION", "record.decision"),
    ("STATUS", "record.status"),
];

const CHECKPOINT_FIELDS: &[Field] = &[
    ("origin", "origin"),
    ("size", "size"),
    ("root hash", "root_hash"),
    ("created", "created_at"),
];

/// Where the log lives: the organization's under the tenant API, or the
/// platform's under the operator API.
struct Log {
    api: Api,
    base: Vec<String>,
}

impl Log {
    fn open(ctx: &Ctx, admin: bool, org: &OrgFlag) -> Result<Log> {
        let realm = Realm::from_admin(admin);
        let api = ctx.api(realm)?;
        let base = match realm {
            Realm::Tenant => vec![
                "v1".into(),
                "orgs".into(),
                ctx.org(&org.org)?,
                "audit".into(),
            ],
            Realm::Admin => vec!["admin".into(), "v1".into(), "audit".into()],
        };
        Ok(Log { api, base })
    }

    fn path<'a>(&'a self, tail: &[&'a str]) -> Vec<&'a str> {
        self.base
            .iter()
            .map(String::as_str)
            .chain(tail.iter().copied())
            .collect()
    }
}

pub async fn run(ctx: &mut Ctx, args: AuditArgs) -> Result<u8> {
    match args.cmd {
        AuditCmd::List { filters, page } => {
            let log = Log::open(ctx, args.admin, &args.org)?;
            let listing = log
                .api
                .list(&log.path(&["entries"]), &filters.query(), &page)
                .await?;
            output::list(ctx.json, &listing, ENTRY_COLUMNS);
        }
        AuditCmd::Checkpoint { save, new, size } => {
            let log = Log::open(ctx, args.admin, &args.org)?;
            let path = log.path(&["checkpoint"]);
            let answer = if new {
                log.api.post_empty(&path).await?
            } else {
                let mut q = Query::new();
                q.opt("size", size);
                log.api.get(&path, &q).await?
            };
            output::show(ctx.json, &answer, CHECKPOINT_FIELDS);
            if let Some(file) = save {
                let checkpoint: AuditCheckpoint = serde_json::from_value(answer)
                    .context("the server answered with an unexpected checkpoint")?;
                std::fs::write(&file, checkpoint.note.as_bytes())
                    .with_context(|| format!("could not write {}", file.display()))?;
                eprintln!(
                    "Saved the signed checkpoint at size {} to {}.",
                    checkpoint.size,
                    file.display()
                );
            }
        }
        AuditCmd::PublicKey { save } => {
            let log = Log::open(ctx, args.admin, &args.org)?;
            let answer = log
                .api
                .get(&log.path(&["public-key"]), &Query::new())
                .await?;
            let key: AuditPublicKey = serde_json::from_value(answer.clone())
                .context("the server answered with an unexpected key")?;
            if ctx.json {
                output::json(&answer);
            } else {
                println!("{}", key.verifier_key);
            }
            if let Some(file) = save {
                std::fs::write(&file, format!("{}\n", key.verifier_key))
                    .with_context(|| format!("could not write {}", file.display()))?;
                eprintln!("Saved the verifier key to {}.", file.display());
            }
        }
        AuditCmd::Export { filters, out } => {
            let log = Log::open(ctx, args.admin, &args.org)?;
            let path = log.path(&["export"]);
            let query = filters.query();
            if out == Path::new("-") {
                let stdout = std::io::stdout();
                let mut lock = stdout.lock();
                log.api.download(&path, &query, &mut lock).await?;
            } else {
                let written = export_to_file(&log.api, &path, &query, &out).await?;
                eprintln!("Wrote {written} bytes to {}.", out.display());
            }
        }
        AuditCmd::Verify {
            file,
            public_key,
            since_checkpoint,
        } => {
            let log = (args.admin, &args.org);
            return verify(ctx, log, &file, &public_key, since_checkpoint.as_deref()).await;
        }
    }
    Ok(exit::OK)
}

/// Writes next to the destination first, so a failed download never leaves
/// a truncated export that looks like tampering.
async fn export_to_file(api: &Api, path: &[&str], query: &Query, out: &Path) -> Result<u64> {
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", out.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".part");
    let tmp = out.with_file_name(tmp_name);
    let result = async {
        let mut file =
            File::create(&tmp).with_context(|| format!("could not create {}", tmp.display()))?;
        let written = api.download(path, query, &mut file).await?;
        file.sync_all()?;
        std::fs::rename(&tmp, out).with_context(|| format!("could not write {}", out.display()))?;
        Ok(written)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The verifier key given inline or in a file.
fn load_verifier(arg: &str) -> Result<NoteVerifier> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?
    } else {
        arg.to_string()
    };
    text.trim()
        .parse()
        .map_err(|e| anyhow!("--public-key is neither a key file nor a verifier key: {e}"))
}

/// The signed note in the export's header line, as the server wrote it.
fn header_note(file: &Path) -> Result<String> {
    let reader = BufReader::new(
        File::open(file).with_context(|| format!("could not open {}", file.display()))?,
    );
    for line in reader.lines() {
        let line = line.with_context(|| format!("could not read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let header: Value = serde_json::from_str(&line).context("the export header is not JSON")?;
        return header
            .get("checkpoint")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the export header has no checkpoint"));
    }
    bail!("the export is empty")
}

/// Which log a command refers to: `--admin` and `--org`.
type LogRef<'a> = (bool, &'a OrgFlag);

async fn verify(
    ctx: &Ctx,
    log: LogRef<'_>,
    file: &Path,
    public_key: &str,
    since: Option<&Path>,
) -> Result<u8> {
    let verifier = load_verifier(public_key)?;
    let reader = BufReader::new(
        File::open(file).with_context(|| format!("could not open {}", file.display()))?,
    );
    let report = verify_export(reader, &verifier).map_err(|e| anyhow!("{e}"))?;
    let mut ok = report.is_clean();

    let consistency = match since {
        None => None,
        Some(old_file) => {
            let outcome = check_consistency(ctx, log, file, old_file, &report, &verifier).await?;
            ok &= outcome.is_ok();
            Some(outcome)
        }
    };

    if ctx.json {
        let consistency = consistency.as_ref().map(|c| match c {
            Ok(msg) => json!({ "ok": true, "message": msg }),
            Err(msg) => json!({ "ok": false, "message": msg }),
        });
        output::json(&json!({
            "ok": ok,
            "origin": report.checkpoint.origin,
            "size": report.checkpoint.size,
            "complete": report.complete,
            "entries_checked": report.entries_checked,
            "problems": report.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "consistency": consistency,
        }));
    } else {
        print_report(&report);
        match &consistency {
            Some(Ok(msg)) => println!("consistency: OK, {msg}"),
            Some(Err(msg)) => println!("consistency: FAILED, {msg}"),
            None => {}
        }
        if ok {
            println!("verified: OK");
        } else {
            println!("verified: FAILED");
        }
    }
    Ok(if ok { exit::OK } else { exit::FAILURE })
}

fn print_report(report: &VerifyReport) {
    println!(
        "checkpoint: {} at size {} (signature valid)",
        report.checkpoint.origin, report.checkpoint.size
    );
    let scope = if report.complete {
        "complete export: missing entries are detected"
    } else {
        "partial export: only the entries present are checked"
    };
    println!("entries:    {} checked ({scope})", report.entries_checked);
    for problem in &report.problems {
        println!("problem:    {problem}");
    }
}

/// Checks that the export's checkpoint extends the saved one; `Err` carries
/// what failed (a verdict, not an error of the command).
async fn check_consistency(
    ctx: &Ctx,
    (admin, org): LogRef<'_>,
    file: &Path,
    old_file: &Path,
    report: &VerifyReport,
    verifier: &NoteVerifier,
) -> Result<std::result::Result<String, String>> {
    let old_note = std::fs::read_to_string(old_file)
        .with_context(|| format!("could not read {}", old_file.display()))?;
    let old = match verifier.verify_checkpoint(&old_note) {
        Ok(cp) => cp,
        Err(e) => return Ok(Err(format!("the saved checkpoint is not trustworthy: {e}"))),
    };
    let new_size = report.checkpoint.size;
    if old.size > new_size {
        return Ok(Err(format!(
            "the saved checkpoint (size {}) is newer than the export's (size {new_size}); export again",
            old.size
        )));
    }
    let new_note = header_note(file)?;
    let log = Log::open(ctx, admin, org)?;
    let mut q = Query::new();
    q.set("from", old.size).set("to", new_size);
    let answer = log
        .api
        .get(&log.path(&["proofs", "consistency"]), &q)
        .await?;
    let proof: AuditProof =
        serde_json::from_value(answer).context("the server answered with an unexpected proof")?;
    let hashes = match proof
        .hashes
        .iter()
        .map(|h| parse_hex_hash(h))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(h) => h,
        Err(_) => return Ok(Err("the server's consistency proof is malformed".into())),
    };
    Ok(
        match verify_consistency_between(&old_note, &new_note, &hashes, verifier) {
            Ok((old, new)) => Ok(format!(
                "the log at size {} extends the saved checkpoint at size {}",
                new.size, old.size
            )),
            Err(e) => Err(e.to_string()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_query_parameters() {
        let f = Filters {
            since: Some("2025-01-01T00:00:00Z".into()),
            until: None,
            principal: None,
            action: Some("project.create".into()),
            decision: Some("deny".into()),
        };
        let api = Api::new("http://127.0.0.1:1", None, None, false).unwrap();
        let url = api.url(&["v1", "x"], &f.query()).unwrap();
        assert_eq!(
            url.query(),
            Some("since=2025-01-01T00%3A00%3A00Z&action=project.create&decision=deny")
        );
    }

    #[test]
    fn bad_keys_are_explained() {
        let err = load_verifier("not-a-key").unwrap_err().to_string();
        assert!(err.contains("--public-key"), "{err}");
    }
}
