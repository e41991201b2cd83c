//! `nuage bench kms`: the key service against baselines measured in the same
//! run.
//!
//! 1. The chunked stream format against a raw AES-256-GCM loop over the same
//!    buffer, on one core (goal: ≥ 80 % of raw), for 64 MiB and 1 MiB.
//! 2. Data-key unwraps of a project key held by nuage, on a temporary SQLite
//!    store: from the cache (goal < 5 µs) against the cold path (a second
//!    key service with no cache, so every unwrap reads the store and unwraps
//!    the key version and the data key).
//! 3. With `--kmip`, a key on a real PyKMIP server: Encrypt and Decrypt round
//!    trips with the KMIP client, the cold unwrap (one KMIP Decrypt each) and
//!    the warm one, counting the KMIP calls in the server's log and then
//!    stopping the server to show cached unwraps do not need it.

use std::future::Future;
use std::time::{Duration, Instant};

use nuage_core::model::kms::{Justification, KeyManagerKind, KmipEndpoint};
use nuage_core::ApiError;
use nuage_kms::external::kmip::KmipClient;
use nuage_kms::external::ExternalError;
use nuage_kms::root::SealConfig;
use nuage_kms::testing::kmip_server::KmipServer;
use nuage_kms::{Kms, KmsConfig, Purpose};
use nuage_store::{Store, StoreOptions};

use super::percentile;

const MIB: usize = 1024 * 1024;
/// Goal: a data key comes out of the cache in less than this.
const WARM_GOAL: Duration = Duration::from_micros(5);
/// Warm unwraps run after the KMIP server is stopped.
const UNWRAPS_WITHOUT_KMIP: usize = 100_000;

#[derive(Debug, clap::Args)]
pub struct KmsArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Also measure a key held on a KMIP server (starts a local PyKMIP from
    /// target/test-venv).
    #[arg(long)]
    kmip: bool,
}

/// Latencies of one kind of call, made one at a time.
struct Latencies {
    name: String,
    calls: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

impl Latencies {
    fn of(name: impl Into<String>, mut samples: Vec<Duration>) -> Latencies {
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        let mean = if samples.is_empty() {
            Duration::ZERO
        } else {
            total.div_f64(samples.len() as f64)
        };
        Latencies {
            name: name.into(),
            calls: samples.len(),
            mean,
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
        }
    }
}

fn print_table(title: &str, rows: &[&Latencies]) {
    println!();
    println!("{title}");
    println!(
        "{:<40} {:>10} {:>11} {:>11} {:>11}",
        "", "calls", "mean", "p50", "p99"
    );
    for r in rows {
        println!(
            "{:<40} {:>10} {:>11} {:>11} {:>11}",
            r.name,
            thousands(r.calls),
            dur(r.mean),
            dur(r.p50),
            dur(r.p99)
        );
    }
}

fn dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.2} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn speed_up(cold: &Latencies, warm: &Latencies) -> f64 {
    if warm.mean.is_zero() {
        0.0
    } else {
        cold.mean.as_secs_f64() / warm.mean.as_secs_f64()
    }
}

fn api(e: ApiError) -> String {
    format!("{} ({})", e.detail, e.code)
}

fn ext(e: ExternalError) -> String {
    e.to_string()
}

/// Calls `f` one call at a time for `budget` (and at least `min_calls`
/// times), timing each call; stops at the first error.
async fn timed<F, Fut>(
    budget: Duration,
    min_calls: usize,
    mut f: F,
) -> Result<Vec<Duration>, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < min_calls || start.elapsed() < budget {
        let t = Instant::now();
        f().await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// Times `kms.unwrap` of one data key for `budget`, after checking once
/// that it gives back `expected`.
async fn unwraps(
    kms: &Kms,
    project_id: &str,
    data_key: &str,
    owner: &str,
    why: &Purpose,
    expected: &[u8],
    budget: Duration,
) -> Result<Vec<Duration>, String> {
    let (key, _) = kms
        .unwrap(project_id, data_key, owner, why)
        .await
        .map_err(api)?;
    if key.expose()[..] != expected[..] {
        return Err(format!("data key {data_key} unwrapped to another key"));
    }
    timed(budget, 10, move || async move {
        kms.unwrap(project_id, data_key, owner, why)
            .await
            .map(|_| ())
            .map_err(api)
    })
    .await
}

/// The key service's state for the measurements.
struct Setup {
    store: Store,
    seal: SealConfig,
    org_id: String,
    project_id: String,
    /// Default settings: unwrapped keys cached for the default TTL.
    kms: Kms,
    /// No cache: every unwrap reads the store (and asks the key manager).
    cold: Kms,
    purpose: Purpose,
}

/// What was met, for the summary.
struct Goals {
    lines: Vec<String>,
}

impl Goals {
    fn add(&mut self, what: String, measured: String, ok: bool) {
        self.add_status(what, measured, met(ok));
    }

    fn add_status(&mut self, what: String, measured: String, status: &str) {
        self.lines
            .push(format!("{what:<52} {measured:>26}  {status}"));
    }
}

pub async fn run(a: KmsArgs) -> Result<(), String> {
    let budget = Duration::try_from_secs_f64(a.seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or("--seconds must be a positive number")?;
    println!(
        "nuage bench kms: {} s per measurement{}",
        a.seconds,
        if a.kmip { ", with KMIP" } else { "" }
    );
    println!(
        "machine: {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let mut goals = Goals { lines: Vec::new() };

    // 1. The stream format against raw AES-256-GCM, on one core.
    for size in [64 * MIB, MIB] {
        let secs = budget.as_secs_f64();
        let r =
            tokio::task::spawn_blocking(move || nuage_kms::bench::stream_throughput(size, secs))
                .await
                .map_err(|e| format!("stream benchmark: {e}"))?;
        println!();
        println!("{r}");
        let floor = 100.0 * r.encrypt_ratio().min(r.decrypt_ratio());
        goals.add(
            format!("stream format ≥ 80 % of raw AES-GCM, {} MiB", size / MIB),
            format!("{floor:.1} % (lower of enc/dec)"),
            r.goal_met(),
        );
    }

    // 2. Data-key unwrap, warm and cold, on a real key service.
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("nuage.db").display()
    );
    let store = Store::open(&url, &StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let (org_id, project_id) = nuage_kms::testing::org_and_project(&store, "bench").await?;
    let seal = SealConfig::KeyFile(dir.path().join("seal.key"));
    let kms = Kms::load(store.clone(), seal.clone(), KmsConfig::default()).await?;
    let cold_cfg = KmsConfig {
        cache_ttl: Duration::ZERO,
        ..KmsConfig::default()
    };
    let cold = Kms::load(store.clone(), seal.clone(), cold_cfg).await?;
    let setup = Setup {
        store,
        seal,
        org_id,
        project_id,
        kms,
        cold,
        purpose: Purpose::new(Justification::ServiceForPrincipal),
    };
    let result = measure_keys(&setup, budget, a.kmip, &mut goals).await;
    setup.store.close().await;
    result?;

    println!();
    println!("goals");
    for l in &goals.lines {
        println!("{l}");
    }
    Ok(())
}

async fn measure_keys(
    s: &Setup,
    budget: Duration,
    with_kmip: bool,
    goals: &mut Goals,
) -> Result<(), String> {
    let ttl = KmsConfig::default().cache_ttl;
    // Cached keys must stay fresh for the whole warm measurement.
    let warm_budget = budget.min(ttl / 3);
    let p = &s.project_id;
    s.kms
        .key_create(&s.org_id, p, "bench", "", None, &None)
        .await
        .map_err(api)?;
    let (dk, _) = s
        .kms
        .data_key(p, "bench", "obj-1", &s.purpose)
        .await
        .map_err(api)?;
    let key = dk.key.expose();
    let warm = unwraps(&s.kms, p, &dk.id, "obj-1", &s.purpose, key, warm_budget).await?;
    let warm = Latencies::of("warm (cache hit)", warm);
    let cold = unwraps(&s.cold, p, &dk.id, "obj-1", &s.purpose, key, budget).await?;
    let cold = Latencies::of("cold (3 store reads, KEK + DEK unwrap)", cold);
    print_table(
        "data-key unwrap, project key held by nuage (temporary SQLite store)",
        &[&warm, &cold],
    );
    println!(
        "cache speed-up {:.0}× (cold mean / warm mean); goal warm < 5 µs: mean {}, p99 {}",
        speed_up(&cold, &warm),
        met(warm.mean < WARM_GOAL),
        met(warm.p99 < WARM_GOAL)
    );
    goals.add(
        "warm data-key unwrap < 5 µs (mean)".into(),
        dur(warm.mean),
        warm.mean < WARM_GOAL,
    );
    goals.add(
        "warm data-key unwrap < 5 µs (p99)".into(),
        dur(warm.p99),
        warm.p99 < WARM_GOAL,
    );

    if with_kmip {
        kmip(s, budget, warm_budget, goals).await?;
    }
    Ok(())
}

/// KMIP Encrypt and Decrypt requests the server has processed, from its log.
fn kmip_crypto_calls(srv: &KmipServer) -> usize {
    let log = srv.log();
    log.matches("Processing operation: Encrypt").count()
        + log.matches("Processing operation: Decrypt").count()
}

fn calls_between(before: usize, after: usize) -> String {
    match after.checked_sub(before) {
        Some(n) => thousands(n),
        None => "? (the server log rotated)".into(),
    }
}

async fn kmip(
    s: &Setup,
    budget: Duration,
    warm_budget: Duration,
    goals: &mut Goals,
) -> Result<(), String> {
    println!();
    println!("starting PyKMIP …");
    let mut srv = match tokio::task::spawn_blocking(KmipServer::start).await {
        Ok(Some(srv)) => srv,
        Ok(None) => {
            println!(
                "KMIP part skipped: pykmip-server is not in target/test-venv or the openssl CLI \
                 is missing. Run ./scripts/test once, or: python3 -m venv target/test-venv && \
                 target/test-venv/bin/pip install pykmip==0.11.0 (or set \
                 NUAGE_TEST_PYKMIP_SERVER to a pykmip-server)"
            );
            goals.add_status("KMIP".into(), "-".into(), "skipped");
            return Ok(());
        }
        Err(e) => return Err(format!("PyKMIP did not start: {e}")),
    };
    let result = kmip_measure(s, &mut srv, budget, warm_budget, goals).await;
    tokio::task::block_in_place(move || drop(srv));
    result
}

async fn kmip_measure(
    s: &Setup,
    srv: &mut KmipServer,
    budget: Duration,
    warm_budget: Duration,
    goals: &mut Goals,
) -> Result<(), String> {
    let cfg = srv.config();
    let client = KmipClient::new(cfg.clone()).map_err(ext)?;
    let uid = client
        .create_aes256_key(Some("nuage-bench"))
        .await
        .map_err(ext)?;
    client.activate(&uid).await.map_err(ext)?;

    // Round trips with the client directly, on a kept TLS connection: a
    // wrapped data key is 64 bytes (the key and a digest of its binding).
    let plaintext: Vec<u8> = (0..64u8).collect();
    let first = client.encrypt(&uid, &plaintext).await.map_err(ext)?;
    client.decrypt(&uid, &first).await.map_err(ext)?;
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while enc.len() < 10 || start.elapsed() < budget {
        let t = Instant::now();
        let blob = client.encrypt(&uid, &plaintext).await.map_err(ext)?;
        enc.push(t.elapsed());
        let t = Instant::now();
        let back = client.decrypt(&uid, &blob).await.map_err(ext)?;
        dec.push(t.elapsed());
        if back[..] != plaintext[..] {
            return Err("KMIP Decrypt did not give back the plaintext".into());
        }
    }
    let enc = Latencies::of("KMIP Encrypt (64 bytes)", enc);
    let dec = Latencies::of("KMIP Decrypt (64 bytes)", dec);

    // The same key registered as a key manager of the organization.
    let endpoint = KmipEndpoint {
        host: cfg.host.clone(),
        port: cfg.port,
        server_name: cfg.server_name.clone(),
        ca_pem: cfg.ca_pem.clone(),
        client_cert_pem: cfg.client_cert_pem.clone(),
    };
    let endpoint = serde_json::to_string(&endpoint).map_err(|e| e.to_string())?;
    let manager = s
        .kms
        .manager_create(
            &s.org_id,
            "hsm",
            KeyManagerKind::Kmip,
            endpoint,
            &cfg.client_key_pem,
        )
        .await
        .map_err(api)?;
    let p = &s.project_id;
    s.kms
        .key_create(&s.org_id, p, "hsm-bench", "", Some((&manager, &uid)), &None)
        .await
        .map_err(api)?;
    let (dk, _) = s
        .kms
        .data_key(p, "hsm-bench", "obj-2", &s.purpose)
        .await
        .map_err(api)?;
    let key = dk.key.expose();

    // Cold: nothing cached, so each unwrap reads the store, builds a KMIP
    // client (a new TLS connection) and sends one Decrypt.
    let before = kmip_crypto_calls(srv);
    // `unwraps` makes one checking call before the timed ones.
    let cold = unwraps(&s.cold, p, &dk.id, "obj-2", &s.purpose, key, budget).await?;
    let cold_calls = calls_between(before, kmip_crypto_calls(srv));
    let cold = Latencies::of("cold unwrap through KMIP (no cache)", cold);

    // Warm: a key service with the default cache, filled by its first unwrap.
    let ttl = KmsConfig::default().cache_ttl;
    let warm_kms = Kms::load(s.store.clone(), s.seal.clone(), KmsConfig::default()).await?;
    let filled = Instant::now();
    let before = kmip_crypto_calls(srv);
    let warm = unwraps(&warm_kms, p, &dk.id, "obj-2", &s.purpose, key, warm_budget).await?;
    let warm_calls = kmip_crypto_calls(srv).checked_sub(before);
    // The first (checking) unwrap filled the cache with one Decrypt.
    let warm_calls_after_fill = warm_calls.map(|n| n.saturating_sub(1));
    let warm = Latencies::of("warm unwrap (cached, default TTL)", warm);

    // Then the KMIP server goes away: cached keys keep working within the TTL.
    tokio::task::block_in_place(|| srv.stop());
    let mut without = 0usize;
    for _ in 0..UNWRAPS_WITHOUT_KMIP {
        let (k, _) = warm_kms
            .unwrap(p, &dk.id, "obj-2", &s.purpose)
            .await
            .map_err(|e| format!("warm unwrap with PyKMIP stopped: {}", api(e)))?;
        if k.expose()[..] != key[..] {
            return Err("a cached data key changed".into());
        }
        without += 1;
    }
    let since_fill = filled.elapsed();
    let cold_refused = match s.cold.unwrap(p, &dk.id, "obj-2", &s.purpose).await {
        Ok(_) => return Err("a cold unwrap succeeded with PyKMIP stopped".into()),
        Err(e) => e.code,
    };

    print_table(
        "external key on PyKMIP 0.11 (KMIP 1.2 over mutual TLS, loopback)",
        &[&enc, &dec, &cold, &warm],
    );
    println!(
        "cache speed-up {:.0}× (cold mean / warm mean); goal warm < 5 µs: mean {}, p99 {}",
        speed_up(&cold, &warm),
        met(warm.mean < WARM_GOAL),
        met(warm.p99 < WARM_GOAL)
    );
    println!(
        "KMIP calls counted in the server log: cold {} unwraps, {cold_calls} KMIP calls; warm {} \
         unwraps, {} KMIP calls after the first",
        thousands(cold.calls + 1),
        thousands(warm.calls),
        warm_calls_after_fill.map_or("?".into(), thousands)
    );
    println!(
        "PyKMIP stopped: {} more warm unwraps, 0 KMIP calls (all succeeded, {:.1} s after the \
         cache was filled, TTL {} s); a cold unwrap now fails with {cold_refused}",
        thousands(without),
        since_fill.as_secs_f64(),
        ttl.as_secs()
    );
    let no_calls = warm_calls_after_fill == Some(0) && since_fill < ttl;
    goals.add(
        "warm unwraps make no KMIP call (server log, stop)".into(),
        format!("{} unwraps, 0 calls", thousands(warm.calls + without)),
        no_calls,
    );
    goals.add(
        "warm unwrap of a KMIP key < 5 µs (mean)".into(),
        dur(warm.mean),
        warm.mean < WARM_GOAL,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(dur(Duration::from_nanos(270)), "0.27 µs");
        assert_eq!(dur(Duration::from_micros(5950)), "5.95 ms");
    }
}
