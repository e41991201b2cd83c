//! The `nuage` command-line client: a thin client of the public API.
//!
//! The `nuage` binary flattens [`Command`] into its own command tree and
//! calls [`run`]. Failures end as one line on stderr and an exit status a
//! script can branch on (see [`exit`]).

mod client;
mod commands;
mod config;
mod console;
pub use console::{open_websocket, Io, WsError};
mod context;
mod output;
mod progress;
mod secret;
mod wait;

use std::process::ExitCode;

pub use commands::Command;

use client::{ApiProblem, NotLoggedIn};

/// Exit statuses (2, usage errors, is clap's).
pub mod exit {
    pub const OK: u8 = 0;
    /// An API error or any other failure.
    pub const FAILURE: u8 = 1;
    /// `nuage policy test` answered "deny".
    pub const DENY: u8 = 3;
    /// Not logged in, or the server refused the credentials (401).
    pub const AUTH: u8 = 4;
}

pub async fn run(cmd: Command, json: bool) -> ExitCode {
    let outcome = match context::Ctx::load(json) {
        Ok(mut ctx) => commands::dispatch(cmd, &mut ctx).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            ExitCode::from(exit_status(&err))
        }
    }
}

/// The error and its causes on one line.
fn error_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

fn exit_status(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<NotLoggedIn>().is_some() {
        return exit::AUTH;
    }
    match err.downcast_ref::<ApiProblem>() {
        Some(p) if p.status == 401 => exit::AUTH,
        _ => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The shape the `nuage` binary wraps the commands in.
    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn command_tree_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_where_people_put_them() {
        let ok = |args: &[&str]| {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        };
        ok(&["nuage", "project", "list", "--org", "acme", "--all"]);
        ok(&[
            "nuage", "--json", "project", "--org", "acme", "create", "web", "--label", "env=prod",
        ]);
        ok(&[
            "nuage",
            "audit",
            "list",
            "--admin",
            "--decision",
            "deny",
            "--limit",
            "5",
        ]);
        ok(&["nuage", "admin", "org", "set-quota", "acme", "20"]);
        ok(&[
            "nuage",
            "role",
            "grant",
            "group:ops",
            "viewer",
            "--project",
            "web",
        ]);
        ok(&[
            "nuage",
            "image",
            "create",
            "debian",
            "-p",
            "web",
            "--file",
            "disk.qcow2",
            "--visibility",
            "org",
        ]);
        ok(&[
            "nuage",
            "image",
            "-p",
            "web",
            "set-visibility",
            "debian",
            "org",
        ]);
        ok(&[
            "nuage", "volume", "create", "root", "--image", "debian", "--size", "10G", "-p", "web",
        ]);
        ok(&["nuage", "volume", "list", "--json", "-p", "web", "--all"]);
        ok(&[
            "nuage",
            "instance",
            "create",
            "vm1",
            "-p",
            "web",
            "--image",
            "debian",
            "--vcpus",
            "2",
            "--memory",
            "1G",
            "--ssh-key",
            "a.pub",
            "--ssh-key",
            "b.pub",
            "--wait",
        ]);
        ok(&[
            "nuage",
            "instance",
            "-p",
            "web",
            "create",
            "vm1",
            "--image",
            "d",
            "--type",
            "small",
            "--wait",
            "--timeout",
            "60",
            "--json",
        ]);
        ok(&[
            "nuage", "instance", "stop", "vm1", "--force", "--wait", "-p", "web",
        ]);
        ok(&[
            "nuage", "instance", "console", "vm1", "--for", "5", "-p", "web",
        ]);
        ok(&["nuage", "instance", "console-log", "vm1", "--bytes", "4096"]);
        ok(&[
            "nuage",
            "volume",
            "attach",
            "data",
            "--instance",
            "vm1",
            "--wait",
        ]);
        ok(&["nuage", "volume", "detach", "data"]);
        ok(&["nuage", "volume", "resize", "data", "--size", "20G"]);
        ok(&["nuage", "volume", "create", "copy", "--snapshot", "s1"]);
        ok(&[
            "nuage", "snapshot", "create", "s1", "--volume", "data", "-p", "web",
        ]);
        let refused = |args: &[&str]| assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        refused(&[
            "nuage", "instance", "create", "vm1", "--image", "d", "--type", "s", "--vcpus", "2",
        ]);
        refused(&["nuage", "instance", "start", "vm1", "--timeout", "5"]);
        refused(&[
            "nuage",
            "volume",
            "create",
            "v",
            "--image",
            "i",
            "--snapshot",
            "s",
        ]);
        refused(&["nuage", "volume", "attach", "data"]);
        refused(&["nuage", "snapshot", "create", "s1"]);
        assert!(Cli::try_parse_from(["nuage", "image", "set-visibility", "d", "world"]).is_err());
        assert!(
            Cli::try_parse_from(["nuage", "image", "create", "d", "-p", "web"]).is_err(),
            "an image is created with its file"
        );
        let err = Cli::try_parse_from(["nuage", "project", "create", "web", "--label", "oops"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key=value"), "{err}");
        assert!(Cli::try_parse_from(["nuage", "login", "--token", "t", "--user", "u"]).is_err());
        assert!(Cli::try_parse_from(["nuage", "audit", "list", "--decision", "maybe"]).is_err());
    }

    fn problem(status: u16) -> anyhow::Error {
        ApiProblem {
            status,
            title: "Unauthorized".into(),
            detail: "the token is expired or revoked".into(),
            code: "unauthenticated".into(),
            request_id: "req_7".into(),
        }
        .into()
    }

    #[test]
    fn statuses() {
        assert_eq!(exit_status(&problem(401)), exit::AUTH);
        assert_eq!(exit_status(&problem(403)), exit::FAILURE);
        assert_eq!(exit_status(&NotLoggedIn { admin: true }.into()), exit::AUTH);
        assert_eq!(exit_status(&anyhow::anyhow!("boom")), exit::FAILURE);
    }

    #[test]
    fn api_problem_line() {
        assert_eq!(
            error_line(&problem(401)),
            "the token is expired or revoked (unauthenticated, request req_7)"
        );
    }

    #[test]
    fn context_stays_on_one_line() {
        let err = anyhow::anyhow!("line one\nline two").context("reading FILE");
        assert_eq!(error_line(&err), "reading FILE: line one line two");
    }
}
