//! `nuage bench`: load benchmark (written later in this file).

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_a: BenchArgs) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
