//! `nuage bench`: measurements that compare each figure with a baseline
//! taken in the same run and process, so they compare like with like on
//! whatever machine runs them.
//!
//! - `nuage bench api`: the control plane under load against a bare axum
//!   handler returning the same JSON.
//! - `nuage bench compute`: virtual machines: time to the guest's first
//!   console line against a raw QEMU start of the same guest, and a burst
//!   of small VMs (API latency meanwhile, memory per VM).
//! - `nuage bench kms`: the key service: the chunked stream format against a
//!   raw AES-256-GCM loop, data-key unwraps from the cache against the cold
//!   path, and with `--kmip` the same through a real PyKMIP server.
//! - `nuage bench s3`: the S3 endpoint: large objects against raw file I/O
//!   in the same data directory, small objects under load, and memory.

mod api;
mod compute;
mod kms;
mod s3;

use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// API throughput and latency against a bare handler baseline.
    Api(api::ApiArgs),
    /// Compute: time to the first console line vs a raw QEMU start, and a
    /// burst of small VMs (API latency, memory per VM).
    Compute(compute::ComputeArgs),
    /// Key service: stream encryption vs raw AES-GCM, data-key unwrap warm vs
    /// cold, and (with --kmip) through a real KMIP server.
    Kms(kms::KmsArgs),
    /// S3 endpoint: large objects vs raw file I/O, small objects under load,
    /// and memory.
    S3(s3::S3Args),
}

pub async fn run(a: BenchArgs, json: bool) -> ExitCode {
    if json {
        eprintln!("nuage bench: --json is not supported; the figures are printed as tables");
        return ExitCode::FAILURE;
    }
    let (name, result) = match a.what {
        What::Api(a) => ("nuage bench api", api::run(a).await),
        What::Compute(a) => ("nuage bench compute", compute::run(a).await),
        What::Kms(a) => ("nuage bench kms", kms::run(a).await),
        What::S3(a) => ("nuage bench s3", s3::run(a).await),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `p` quantile (0–1) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
