//! The `nuage` command-line client: a thin client of the public API.

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the caller.
    Whoami,
}

pub async fn run(_cmd: Command, _json: bool) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
