//! Instance types: the sizes instances are created with. Tenants list them
//! (`nuage instance-type list`); operators define them (`nuage admin
//! instance-type set|delete`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::PageArgs;
use crate::client::Query;
use crate::context::{Ctx, Realm};
use crate::exit;
use crate::output::{self, Field};

#[derive(Debug, Args)]
pub struct InstanceTypeArgs {
    #[command(subcommand)]
    cmd: InstanceTypeCmd,
}

#[derive(Debug, Subcommand)]
enum InstanceTypeCmd {
    /// List the instance types the platform offers.
    List(PageArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminInstanceTypeCmd {
    /// List instance types.
    List(PageArgs),
    /// Create or replace an instance type (instances already created keep
    /// their size).
    Set {
        name: String,
        /// vCPUs (1-64).
        #[arg(long)]
        vcpus: i64,
        /// Memory: 512M, 2G, or a number of MiB (64 MiB to 256 GiB).
        #[arg(long)]
        memory: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an instance type.
    Delete { name: String },
}

pub const COLUMNS: &[Field] = &[
    ("NAME", "name"),
    ("VCPUS", "vcpus"),
    ("MEMORY (MIB)", "memory_mib"),
    ("DESCRIPTION", "description"),
];

const FIELDS: &[Field] = &[
    ("name", "name"),
    ("vcpus", "vcpus"),
    ("memory (MiB)", "memory_mib"),
    ("description", "description"),
    ("created", "created_at"),
];

/// Memory in MiB from `512M`, `2G`, `1T`, `1048576K` or a bare number of
/// MiB (as QEMU's `-m`); units are powers of 1024.
pub fn parse_memory_mib(s: &str) -> Result<i64> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => bail!("memory {s:?}: write it as 512M, 2G or a number of MiB"),
    };
    let kib = match unit
        .trim_end_matches(['i', 'B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "K" => Some(n),
        "" | "M" => n.checked_mul(1 << 10),
        "G" => n.checked_mul(1 << 20),
        "T" => n.checked_mul(1 << 30),
        _ => None,
    };
    match kib {
        Some(k) if k % 1024 == 0 => Ok(k / 1024),
        _ => bail!("memory {s:?} is not a whole number of MiB (write it as 512M, 2G …)"),
    }
}

pub async fn run(ctx: &mut Ctx, args: InstanceTypeArgs) -> Result<u8> {
    let api = ctx.api(Realm::Tenant)?;
    match args.cmd {
        InstanceTypeCmd::List(page) => {
            let listing = api
                .list(&["v1", "instance-types"], &Query::new(), &page)
                .await?;
            output::list(ctx.json, &listing, COLUMNS);
        }
    }
    Ok(exit::OK)
}

pub async fn admin(ctx: &mut Ctx, cmd: AdminInstanceTypeCmd) -> Result<u8> {
    let api = ctx.api(Realm::Admin)?;
    let base = ["admin", "v1", "instance-types"];
    match cmd {
        AdminInstanceTypeCmd::List(page) => {
            let listing = api.list(&base, &Query::new(), &page).await?;
            output::list(ctx.json, &listing, COLUMNS);
        }
        AdminInstanceTypeCmd::Set {
            name,
            vcpus,
            memory,
            description,
        } => {
            let body = json!({
                "vcpus": vcpus,
                "memory_mib": parse_memory_mib(&memory)?,
                "description": description.unwrap_or_default(),
            });
            let t = api
                .put(&[&base[..], &[name.as_str()]].concat(), &body)
                .await?;
            output::show(ctx.json, &t, FIELDS);
        }
        AdminInstanceTypeCmd::Delete { name } => {
            api.delete(&[&base[..], &[name.as_str()]].concat(), None)
                .await?;
            output::done(ctx.json, &format!("Deleted instance type {name}."));
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::parse_memory_mib;

    #[test]
    fn memory_in_mib() {
        assert_eq!(parse_memory_mib("1G").ok(), Some(1024));
        assert_eq!(parse_memory_mib("512M").ok(), Some(512));
        assert_eq!(parse_memory_mib("2GiB").ok(), Some(2048));
        assert_eq!(parse_memory_mib("1536").ok(), Some(1536));
        assert_eq!(parse_memory_mib("2048K").ok(), Some(2));
        for bad in ["", "1.5G", "1000K", "G", "5X", "-1G"] {
            assert!(parse_memory_mib(bad).is_err(), "{bad}");
        }
    }
}
