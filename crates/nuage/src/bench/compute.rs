//! `nuage bench compute`: the speed goals of the compute issue, measured in
//! one run against a baseline taken in the same run.
//!
//! A real server starts in-process on a temporary data directory, the test
//! guest (`scripts/test-guest`) is uploaded once as an image, then:
//!
//! - time to the first console line: a raw `qemu-system-x86_64` started by
//!   the bench (an unencrypted overlay of the guest, the same machine, CPU,
//!   accelerator, memory, root ports and seed as the agent gives a VM,
//!   serial to a file watched every 10 ms) against `POST …/instances` until
//!   `GET …/console-log` (polled every 50 ms) shows the same line,
//!   alternating, `--runs` of each; instances deleted between runs;
//! - a burst of `--vms` small instances created at once: time until all
//!   are `running` and until all print `ready`, the latency of
//!   authenticated `GET`s of instances (and lists) made by a paced load
//!   loop meanwhile, and the server's RSS per VM (the bench shares the
//!   process with the server; QEMU processes are separate and reported
//!   apart).
//!
//! `RUST_LOG=…` shows the server's log on stderr (e.g.
//! `RUST_LOG=info,nuage_qemu=debug` for the agent's QMP commands).
//!
//! The node's overcommit ratios are raised through the admin API when the
//! burst would not fit otherwise, and every QEMU is killed at the end, also
//! on error, so a failed run leaves no VM behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nuage_api::ServerConfig;
use nuage_qemu::seed::Seed;
use serde_json::{json, Value};

use super::percentile;

#[derive(Debug, clap::Args)]
pub struct ComputeArgs {
    /// The test guest's qcow2; by default `scripts/test-guest` (relative
    /// to the current directory: run from the repository root) builds it
    /// or prints the cached one.
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Boots of each kind (raw QEMU, nuage) for the time to the first
    /// console line, alternating; 0 skips that part.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// vCPUs of those boots.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory of those boots, MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Instances created at once in the burst; 0 skips it.
    #[arg(long, default_value_t = 20)]
    vms: usize,
    /// Memory of each burst instance, MiB (1 vCPU each). The test guest
    /// boots with 80; with 72 its kernel panics, with 64 it prints nothing.
    #[arg(long, default_value_t = 80)]
    burst_memory: u64,
    /// How long the burst may take until every guest is ready, seconds.
    #[arg(long, default_value_t = 300)]
    ready_timeout: u64,
    /// Concurrent clients of the load loop during the burst.
    #[arg(long, default_value_t = 4)]
    load_clients: usize,
    /// Pause of each load client between two requests, ms.
    #[arg(long, default_value_t = 20)]
    load_pause_ms: u64,
    /// How long the load keeps going once every guest is ready (the VMs
    /// idle), seconds: the comparison for the burst's latencies.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    /// Spare encrypted disks the node keeps ready (`nuage server
    /// --spare-disks`); each timed boot first waits up to a minute for
    /// one. 0 measures a node that makes every disk when asked.
    #[arg(long, default_value_t = 2)]
    spare_disks: usize,
    /// CPU niceness of the VMs' QEMU (`nuage server --vm-nice`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    vm_nice: i32,
    /// SQLite durability of the server (`nuage server --sqlite-sync`).
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
}

const QEMU: &str = nuage_qemu::machine::QEMU;
const BOOT_LINE: &str = "nuage-guest: boot";
const READY_LINE: &str = "nuage-guest: ready";
const PROJECT: &str = "/v1/orgs/bench/projects/web";
/// How long one boot of the first part may take until `ready`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long deleted instances may take to go.
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- helpers

/// The REST API of the server under test.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    tenant: String,
    admin: String,
    /// The organization owner's token.
    token: String,
    /// The operator's (bootstrap) token.
    operator: String,
}

impl Api {
    /// One request to the tenant API (`path` from `/v1`); the status and
    /// the JSON body (`null` if none).
    async fn t(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.tenant);
        send(self.http.request(method, &url), &self.token, body, &url).await
    }

    /// One request to the admin API.
    async fn a(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.admin);
        send(self.http.request(method, &url), &self.operator, body, &url).await
    }

    /// A request that must answer `want`.
    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value, String> {
        let (status, v) = self.t(method.clone(), path, body).await?;
        if status != want {
            return Err(format!("{method} {path}: {status} {v}"));
        }
        Ok(v)
    }
}

async fn send(
    r: reqwest::RequestBuilder,
    token: &str,
    body: Option<Value>,
    url: &str,
) -> Result<(u16, Value), String> {
    let r = r.bearer_auth(token);
    let r = match body {
        Some(b) => r.json(&b),
        None => r,
    };
    let r = r.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map(secs).unwrap_or_else(|| "-".into())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    percentile(&s, 0.5)
}

/// A field of `/proc/<pid>/status` (`VmRSS:` …) in MiB.
fn status_mib(pid: &str, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// (VmRSS, VmHWM) of this process, MiB.
fn rss() -> (f64, f64) {
    (
        status_mib("self", "VmRSS:").unwrap_or(f64::NAN),
        status_mib("self", "VmHWM:").unwrap_or(f64::NAN),
    )
}

/// The QEMU processes of the run directories under `vm_dir`: how many,
/// and their RSS in all, MiB.
fn qemu_rss(vm_dir: &Path) -> (usize, f64) {
    let (mut n, mut total) = (0, 0.0);
    for e in std::fs::read_dir(vm_dir).into_iter().flatten().flatten() {
        let pid = std::fs::read_to_string(e.path().join(nuage_qemu::machine::PID_FILE));
        if let Some(mib) = pid.ok().and_then(|p| status_mib(p.trim(), "VmRSS:")) {
            n += 1;
            total += mib;
        }
    }
    (n, total)
}

/// The test guest: `--guest`, or the last stdout line of
/// `scripts/test-guest` run from the current directory.
fn guest(arg: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = arg {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("--guest {}: no such file", p.display()))
        };
    }
    let script = Path::new("scripts/test-guest");
    if !script.is_file() {
        return Err(
            "no --guest given and no scripts/test-guest here: run from the repository root, \
             or pass --guest PATH (the qcow2 that scripts/test-guest prints)"
                .into(),
        );
    }
    println!("building (or finding the cached) test guest with scripts/test-guest");
    let out = std::process::Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("scripts/test-guest: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/test-guest failed: {}", out.status));
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or("scripts/test-guest printed no path")?;
    if !path.is_file() {
        return Err(format!(
            "scripts/test-guest printed {}, which is not a file",
            path.display()
        ));
    }
    Ok(path)
}

/// Kills every VM of the server when dropped, so an error or a panic
/// anywhere in the bench leaves no QEMU behind.
struct KillVms(nuage_compute::Compute);

impl Drop for KillVms {
    fn drop(&mut self) {
        let n = self.0.host().kill_all_vms();
        if n > 0 {
            eprintln!("nuage bench compute: killed {n} QEMU process(es) left running");
        }
    }
}

// ---------------------------------------------------------------- first line

/// What one boot took, from the start (spawn, or the `POST`).
struct Boot {
    first_line: Duration,
    ready: Option<Duration>,
    /// nuage only: the `POST` answered, and the instance was seen `running`.
    created: Option<Duration>,
    running: Option<Duration>,
}

/// A raw QEMU start of the guest: an overlay and a seed made beforehand
/// (not timed), then the clock runs from the spawn to the lines in the
/// serial file.
async fn raw_boot(
    guest: &Path,
    dir: &Path,
    name: &str,
    accel: &str,
    vcpus: u32,
    memory_mib: u64,
) -> Result<Boot, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let overlay = dir.join("boot.qcow2");
    let st = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(guest)
        .arg(&overlay)
        .status()
        .await
        .map_err(|e| format!("qemu-img: {e}"))?;
    if !st.success() {
        return Err(format!("qemu-img create: {st}"));
    }
    let seed = dir.join("seed.iso");
    Seed {
        instance_id: name.to_string(),
        hostname: name.to_string(),
        ..Seed::default()
    }
    .build(&seed)
    .await
    .map_err(|e| format!("seed: {e}"))?;
    let console = dir.join("console.log");
    let log = dir.join("qemu.log");
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;

    let path = |p: &Path| p.display().to_string();
    let mut cmd = tokio::process::Command::new(QEMU);
    cmd.args(["-name", &format!("guest={name}")])
        .args(["-nodefaults", "-no-user-config"])
        .args(["-machine", &format!("q35,accel={accel}")])
        .args(["-cpu", "max", "-smp", &vcpus.to_string()])
        .args(["-m", &format!("{memory_mib}M")])
        .args(["-display", "none", "-boot", "strict=on"])
        .args([
            "-chardev",
            &format!("file,id=serial0,path={}", path(&console)),
        ])
        .args(["-serial", "chardev:serial0"]);
    for i in 0..nuage_qemu::machine::ROOT_PORTS {
        cmd.args([
            "-device",
            &format!("pcie-root-port,id=rp{i},bus=pcie.0,chassis={}", i + 1),
        ]);
    }
    let boot = json!({"driver": "qcow2", "node-name": "boot",
        "file": {"driver": "file", "filename": path(&overlay)}});
    let seed = json!({"driver": "raw", "node-name": "seed", "read-only": true,
        "file": {"driver": "file", "filename": path(&seed), "read-only": true}});
    cmd.args(["-blockdev", &boot.to_string()])
        .args([
            "-device",
            "virtio-blk-pci,drive=boot,id=boot,serial=boot,bus=rp0,bootindex=1",
        ])
        .args(["-blockdev", &seed.to_string()])
        .args([
            "-device",
            "virtio-blk-pci,drive=seed,id=seed,serial=cidata,bus=rp1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);

    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {QEMU}: {e}"))?;
    let mut first_line = None;
    let result = loop {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            break Err(format!("raw QEMU exited ({st}): {}", log.trim()));
        }
        let out = std::fs::read(&console).unwrap_or_default();
        let out = String::from_utf8_lossy(&out);
        if first_line.is_none() && out.contains(BOOT_LINE) {
            first_line = Some(t0.elapsed());
        }
        if let Some(f) = first_line {
            if out.contains(READY_LINE) {
                break Ok(Boot {
                    first_line: f,
                    ready: Some(t0.elapsed()),
                    created: None,
                    running: None,
                });
            }
        }
        if t0.elapsed() > BOOT_TIMEOUT {
            break Err(format!(
                "raw QEMU: no {:?} within {BOOT_TIMEOUT:?}; console: {out:?}",
                if first_line.is_none() {
                    BOOT_LINE
                } else {
                    READY_LINE
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(dir);
    result
}

/// Creates instance `name` and polls (every 50 ms) its state and console
/// log until the guest is ready.
async fn nuage_boot(api: &Api, name: &str, vcpus: u32, memory_mib: u64) -> Result<Boot, String> {
    let inst = format!("{PROJECT}/instances/{name}");
    let console = format!("{inst}/console-log");
    let t0 = Instant::now();
    api.expect(
        reqwest::Method::POST,
        &format!("{PROJECT}/instances"),
        Some(json!({"name": name, "image": "guest", "vcpus": vcpus,
                    "memory": format!("{memory_mib}M")})),
        201,
    )
    .await?;
    let created = t0.elapsed();
    let (mut running, mut first_line) = (None, None);
    loop {
        let state = async {
            if running.is_some() {
                return Ok(None);
            }
            api.expect(reqwest::Method::GET, &inst, None, 200)
                .await
                .map(Some)
        };
        let log = api.expect(reqwest::Method::GET, &console, None, 200);
        let (state, log) = tokio::join!(state, log);
        if let Some(s) = state? {
            match s["state"].as_str() {
                Some("running") => running = Some(t0.elapsed()),
                Some("failed") => return Err(format!("instance {name} failed: {s}")),
                _ => {}
            }
        }
        let out = log?["output"].as_str().unwrap_or_default().to_string();
        if first_line.is_none() && out.contains(BOOT_LINE) {
            first_line = Some(t0.elapsed());
        }
        if let Some(f) = first_line {
            if out.contains(READY_LINE) {
                return Ok(Boot {
                    first_line: f,
                    ready: Some(t0.elapsed()),
                    created: Some(created),
                    running,
                });
            }
        }
        if t0.elapsed() > BOOT_TIMEOUT {
            return Err(format!(
                "instance {name}: not ready within {BOOT_TIMEOUT:?}; console: {out:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to a minute for the node to have a spare disk ready; whether
/// it has one.
async fn wait_spare(data_dir: &Path) -> bool {
    let dir = data_dir.join("compute/spares");
    let t0 = Instant::now();
    loop {
        let ready = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("spare-"))
            })
            .unwrap_or(false);
        if ready || t0.elapsed() > Duration::from_secs(60) {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes instances and waits until every one answers 404; how long.
async fn delete_all(api: &Api, names: &[String]) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for n in names {
        let (api, path) = (api.clone(), format!("{PROJECT}/instances/{n}"));
        tasks.push(tokio::spawn(async move {
            match api.t(reqwest::Method::DELETE, &path, None).await? {
                (202 | 404, _) => Ok(()),
                (s, v) => Err(format!("DELETE {path}: {s} {v}")),
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    loop {
        let (s, v) = api
            .t(
                reqwest::Method::GET,
                &format!("{PROJECT}/instances?limit=1000"),
                None,
            )
            .await?;
        let left = v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| {
                        i["name"]
                            .as_str()
                            .is_some_and(|n| names.iter().any(|m| m == n))
                    })
                    .count()
            })
            .unwrap_or(usize::MAX);
        if s == 200 && left == 0 {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > DELETE_TIMEOUT {
            return Err(format!(
                "{left} instance(s) still there {DELETE_TIMEOUT:?} after DELETE"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- burst

/// One request of the load loop: when it started (since the burst's
/// start), how long it took, whether it answered 200, and whether it was
/// a list.
struct Sample {
    at: Duration,
    lat: Duration,
    ok: bool,
    list: bool,
}

/// Latency figures of the samples started within `[from, to)`.
struct Window {
    requests: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn window(samples: &[Sample], from: Duration, to: Duration, list: Option<bool>) -> Window {
    let sel: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && list.is_none_or(|l| s.list == l))
        .collect();
    let mut lat: Vec<Duration> = sel.iter().map(|s| s.lat).collect();
    lat.sort();
    let span = to.saturating_sub(from).as_secs_f64().max(1e-9);
    Window {
        requests: sel.len(),
        errors: sel.iter().filter(|s| !s.ok).count(),
        rps: sel.len() as f64 / span,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

/// The burst's figures.
struct Burst {
    vms: usize,
    create_p50: Duration,
    create_max: Duration,
    /// Per instance: seen `running`, printed `ready` (since the burst's start).
    running: Vec<Option<Duration>>,
    ready: Vec<Option<Duration>>,
    failed: Vec<String>,
    /// When the burst phase ended (all ready, or the timeout).
    end: Duration,
    all_running: Option<Duration>,
    samples: Vec<Sample>,
    idle_from: Duration,
    idle_to: Duration,
    rss_before: f64,
    rss_with: f64,
    /// The peak during the burst.
    hwm: f64,
    /// Once every instance is deleted.
    rss_after: f64,
    qemu_n: usize,
    qemu_rss: f64,
    delete: Duration,
}

/// The paced load loop: `clients` tasks, each a `GET` of one of the
/// created instances (every fifth request a list) and a pause, until
/// `stop`.
fn start_load(
    api: &Api,
    clients: usize,
    pause: Duration,
    names: Arc<Mutex<Vec<String>>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..clients)
        .map(|c| {
            let (api, names, stop) = (api.clone(), names.clone(), stop.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let name = names.lock().ok().and_then(|n| {
                        (!n.is_empty() && i % 5 != 4).then(|| n[i % n.len()].clone())
                    });
                    let path = match &name {
                        Some(n) => format!("{PROJECT}/instances/{n}"),
                        None => format!("{PROJECT}/instances?limit=100"),
                    };
                    let at = t0.elapsed();
                    let t = Instant::now();
                    let ok = matches!(api.t(reqwest::Method::GET, &path, None).await, Ok((200, _)));
                    out.push(Sample {
                        at,
                        lat: t.elapsed(),
                        ok,
                        list: name.is_none(),
                    });
                    i += 1;
                    tokio::time::sleep(pause).await;
                }
                out
            })
        })
        .collect()
}

async fn burst(api: &Api, a: &ComputeArgs, vm_dir: &Path) -> Result<Burst, String> {
    let n = a.vms;
    let names: Vec<String> = (0..n).map(|i| format!("burst-{i:02}")).collect();
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (rss_before, _) = rss();
    // Resets VmHWM to the current RSS (Linux ≥ 4.0): the peak below is the burst's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let t0 = Instant::now();
    let load = start_load(
        api,
        a.load_clients,
        Duration::from_millis(a.load_pause_ms),
        created.clone(),
        t0,
        stop.clone(),
    );
    let stop_load = |stop: &AtomicBool| stop.store(true, Ordering::Relaxed);

    // Every create at once.
    let mut posts = Vec::new();
    for name in &names {
        let (api, name, created) = (api.clone(), name.clone(), created.clone());
        let memory = format!("{}M", a.burst_memory);
        posts.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = api
                .expect(
                    reqwest::Method::POST,
                    &format!("{PROJECT}/instances"),
                    Some(json!({"name": name, "image": "guest", "vcpus": 1, "memory": memory})),
                    201,
                )
                .await;
            let took = t.elapsed();
            if r.is_ok() {
                if let Ok(mut c) = created.lock() {
                    c.push(name);
                }
            }
            r.map(|_| took)
        }));
    }
    let mut create_lat = Vec::new();
    let mut first_err = None;
    for p in posts {
        match p.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(d) => create_lat.push(d),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        stop_load(&stop);
        return Err(format!("burst: a create failed: {e}"));
    }
    create_lat.sort();

    // Until every instance is running and its guest ready, or the timeout.
    let mut running: Vec<Option<Duration>> = vec![None; n];
    let mut ready: Vec<Option<Duration>> = vec![None; n];
    let mut failed = Vec::new();
    let deadline = Duration::from_secs(a.ready_timeout);
    let mut all_running = None;
    let mut last_console = Instant::now() - Duration::from_secs(1);
    loop {
        let (s, v) = api
            .t(
                reqwest::Method::GET,
                &format!("{PROJECT}/instances?limit=1000"),
                None,
            )
            .await?;
        if s != 200 {
            stop_load(&stop);
            return Err(format!("listing instances: {s} {v}"));
        }
        let now = t0.elapsed();
        for it in v["items"].as_array().into_iter().flatten() {
            let Some(k) = names.iter().position(|m| it["name"].as_str() == Some(m)) else {
                continue;
            };
            match it["state"].as_str() {
                Some("running") if running[k].is_none() => running[k] = Some(now),
                Some("failed") if !failed.contains(&names[k]) => failed.push(format!(
                    "{}: {}",
                    names[k],
                    it["status_message"].as_str().unwrap_or("")
                )),
                _ => {}
            }
        }
        if all_running.is_none() && running.iter().all(Option::is_some) {
            all_running = Some(now);
        }
        // Console logs of the running guests not yet ready, every ~500 ms.
        if last_console.elapsed() >= Duration::from_millis(500) {
            last_console = Instant::now();
            for k in 0..n {
                if running[k].is_none() || ready[k].is_some() {
                    continue;
                }
                let (s, v) = api
                    .t(
                        reqwest::Method::GET,
                        &format!("{PROJECT}/instances/{}/console-log", names[k]),
                        None,
                    )
                    .await?;
                if s == 200 && v["output"].as_str().is_some_and(|o| o.contains(READY_LINE)) {
                    ready[k] = Some(t0.elapsed());
                }
            }
        }
        if ready.iter().all(Option::is_some) || !failed.is_empty() || t0.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = t0.elapsed();
    let (rss_with, hwm) = rss();
    let (qemu_n, qemu_rss_total) = qemu_rss(vm_dir);

    // The same load with the VMs idle, for comparison.
    let idle_from = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(a.idle_seconds)).await;
    let idle_to = t0.elapsed();
    stop_load(&stop);
    let mut samples = Vec::new();
    for l in load {
        samples.extend(l.await.unwrap_or_default());
    }

    println!("burst: deleting the {n} instances");
    let delete = delete_all(api, &names).await?;
    let (rss_after, _) = rss();
    Ok(Burst {
        vms: n,
        create_p50: percentile(&create_lat, 0.5),
        create_max: create_lat.last().copied().unwrap_or_default(),
        running,
        ready,
        failed,
        end,
        all_running,
        samples,
        idle_from,
        idle_to,
        rss_before,
        rss_with,
        hwm,
        rss_after,
        qemu_n,
        qemu_rss: qemu_rss_total,
        delete,
    })
}

// ---------------------------------------------------------------- run

pub async fn run(a: ComputeArgs) -> Result<(), String> {
    // The server's log (the agent's steps, with timestamps) only when asked
    // for: it would drown the tables otherwise.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let guest = guest(a.guest.clone())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = dir.path().join("data");
    let mut cfg = ServerConfig::new(data_dir.clone());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.s3_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.spare_disks = a.spare_disks;
    cfg.sqlite_sync_full = a.sqlite_sync == "full";
    cfg.vm_nice = a.vm_nice;
    let server = nuage_api::start(cfg).await.map_err(|e| e.to_string())?;
    let guard = KillVms(server.compute().clone());
    let node = server.node.name.clone();
    let result = bench(&a, &server, &guest, dir.path(), &data_dir, &node).await;
    // The agent stops before the last VMs are killed, so none starts again.
    server.shutdown().await;
    drop(guard);
    result
}

async fn bench(
    a: &ComputeArgs,
    server: &nuage_api::RunningServer,
    guest: &Path,
    scratch: &Path,
    data_dir: &Path,
    node: &str,
) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.load_clients + a.vms + 4)
        .build()
        .map_err(|e| e.to_string())?;
    let operator = server.bootstrap_token.clone().ok_or("no bootstrap token")?;
    let mut api = Api {
        http,
        tenant: format!("http://{}", server.tenant_addr),
        admin: format!("http://{}", server.admin_addr),
        token: String::new(),
        operator,
    };
    let (s, created) = api
        .a(
            reqwest::Method::POST,
            "/admin/v1/orgs",
            Some(json!({"name": "bench", "owner": {"name": "owner"}})),
        )
        .await?;
    api.token = created["owner_token"]["secret"]
        .as_str()
        .ok_or_else(|| format!("organization not created: {s} {created}"))?
        .to_string();
    api.expect(
        reqwest::Method::POST,
        "/v1/orgs/bench/projects",
        Some(json!({"name": "web"})),
        201,
    )
    .await?;

    // The node: its accelerator (the raw baseline uses the same) and room.
    let (_, nodes) = api.a(reqwest::Method::GET, "/admin/v1/nodes", None).await?;
    let n = nodes["items"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == node))
        .cloned()
        .ok_or_else(|| format!("node {node} not registered: {nodes}"))?;
    let accel = n["accel"].as_str().unwrap_or("tcg").to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "nuage bench compute: guest {}; data dir {}",
        guest.display(),
        data_dir.display()
    );
    println!(
        "machine: {cpus} CPUs, shared by the bench, the server and every QEMU; node {node}: accel {accel} ({}), {} vCPUs, {} MiB",
        n["accel_reason"].as_str().unwrap_or(""),
        n["vcpus"],
        n["memory_mib"]
    );

    // The image, uploaded once.
    api.expect(
        reqwest::Method::POST,
        &format!("{PROJECT}/images"),
        Some(json!({"name": "guest"})),
        201,
    )
    .await?;
    let bytes = tokio::fs::read(guest)
        .await
        .map_err(|e| format!("{}: {e}", guest.display()))?;
    let t = Instant::now();
    let r = api
        .http
        .put(format!("{}{PROJECT}/images/guest/file", api.tenant))
        .bearer_auth(&api.token)
        .body(bytes)
        .send()
        .await
        .map_err(|e| format!("image upload: {e}"))?;
    if !r.status().is_success() {
        let st = r.status();
        return Err(format!(
            "image upload: {st} {}",
            r.text().await.unwrap_or_default()
        ));
    }
    println!("image uploaded and imported in {}", secs(t.elapsed()));

    // ------------------------------------------------ first console line
    let mut raw = Vec::new();
    let mut nuage = Vec::new();
    let mut deletes = Vec::new();
    let mut spared = Vec::new();
    for k in 0..a.runs {
        println!(
            "first console line, run {}/{}: raw QEMU, then nuage",
            k + 1,
            a.runs
        );
        raw.push(
            raw_boot(
                guest,
                &scratch.join(format!("raw-{k}")),
                &format!("raw-{k}"),
                &accel,
                a.vcpus,
                a.memory,
            )
            .await?,
        );
        let name = format!("first-{k}");
        let spare = a.spare_disks > 0 && wait_spare(data_dir).await;
        spared.push(spare);
        nuage.push(nuage_boot(&api, &name, a.vcpus, a.memory).await?);
        deletes.push(delete_all(&api, &[name]).await?);
    }

    // ------------------------------------------------ burst
    let mut burst_figures = None;
    if a.vms > 0 {
        let (_, nodes) = api.a(reqwest::Method::GET, "/admin/v1/nodes", None).await?;
        let n = nodes["items"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == node))
            .cloned()
            .unwrap_or_default();
        let f = |k: &str| n[k].as_f64().unwrap_or(0.0);
        let need_cpu = a.vms as f64 + f("used_vcpus");
        let need_mem = (a.vms as u64 * a.burst_memory) as f64 + f("used_memory_mib");
        let mut patch = serde_json::Map::new();
        if need_cpu > f("vcpus") * f("cpu_overcommit") {
            let r = (need_cpu / f("vcpus").max(1.0)).ceil().min(16.0);
            patch.insert("cpu_overcommit".into(), json!(r));
        }
        if need_mem > f("memory_mib") * f("memory_overcommit") {
            let r = (need_mem / f("memory_mib").max(1.0)).ceil().min(4.0);
            patch.insert("memory_overcommit".into(), json!(r));
        }
        if !patch.is_empty() {
            let path = format!("/admin/v1/nodes/{node}");
            let (s, v) = api
                .a(
                    reqwest::Method::PATCH,
                    &path,
                    Some(Value::Object(patch.clone())),
                )
                .await?;
            if s != 200 {
                return Err(format!("PATCH {path}: {s} {v}"));
            }
            println!(
                "burst: raised the node's overcommit so {} × (1 vCPU, {} MiB) fit: PATCH {path} {} (was cpu {} memory {})",
                a.vms,
                a.burst_memory,
                Value::Object(patch),
                f("cpu_overcommit"),
                f("memory_overcommit")
            );
        }
        println!(
            "burst: {} instances (1 vCPU, {} MiB) at once; load: {} clients, {} ms pause, GET of an instance (every fifth a list)",
            a.vms, a.burst_memory, a.load_clients, a.load_pause_ms
        );
        burst_figures = Some(burst(&api, a, &data_dir.join("compute/vm")).await?);
    }

    // ------------------------------------------------ report
    let mut goals = Vec::new();
    if !raw.is_empty() {
        println!();
        println!(
            "time to the first console line ({BOOT_LINE:?}), {} vCPU, {} MiB, accel {accel}; nuage polls every 50 ms, raw every 10 ms",
            a.vcpus, a.memory
        );
        println!(
            "{:<6} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10} {:>6}",
            "run",
            "raw first",
            "raw ready",
            "POST",
            "running",
            "nuage first",
            "nuage ready",
            "delete",
            "spare"
        );
        for (k, (r, n)) in raw.iter().zip(&nuage).enumerate() {
            println!(
                "{:<6} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10} {:>6}",
                k + 1,
                secs(r.first_line),
                opt_secs(r.ready),
                n.created.map(ms).unwrap_or_default(),
                opt_secs(n.running),
                secs(n.first_line),
                opt_secs(n.ready),
                secs(deletes[k]),
                if spared[k] { "yes" } else { "no" }
            );
        }
        let rf: Vec<Duration> = raw.iter().map(|b| b.first_line).collect();
        let nf: Vec<Duration> = nuage.iter().map(|b| b.first_line).collect();
        let rr: Vec<Duration> = raw.iter().filter_map(|b| b.ready).collect();
        let nr: Vec<Duration> = nuage.iter().filter_map(|b| b.ready).collect();
        let nrun: Vec<Duration> = nuage.iter().filter_map(|b| b.running).collect();
        let ratio = median(&nf).as_secs_f64() / median(&rf).as_secs_f64().max(1e-9);
        let ratio_ready = median(&nr).as_secs_f64() / median(&rr).as_secs_f64().max(1e-9);
        println!(
            "{:<6} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "median",
            secs(median(&rf)),
            secs(median(&rr)),
            "",
            secs(median(&nrun)),
            secs(median(&nf)),
            secs(median(&nr)),
            secs(median(&deletes))
        );
        println!(
            "nuage / raw, medians: first line {ratio:.2}×, ready {ratio_ready:.2}× (nuage's extra time to the first line: {})",
            secs(median(&nf).saturating_sub(median(&rf)))
        );
        goals.push(format!(
            "goal first console line via nuage ≤ 1.2 × raw QEMU: {ratio:.2}×: {}",
            met(ratio <= 1.2)
        ));
    }

    if let Some(b) = &burst_figures {
        println!();
        let ran = b.running.iter().filter(|r| r.is_some()).count();
        let rdy = b.ready.iter().filter(|r| r.is_some()).count();
        let mut runs: Vec<Duration> = b.running.iter().flatten().copied().collect();
        let mut rdys: Vec<Duration> = b.ready.iter().flatten().copied().collect();
        runs.sort();
        rdys.sort();
        println!(
            "burst of {} instances (1 vCPU, {} MiB), times from the first POST:",
            b.vms, a.burst_memory
        );
        println!(
            "  POST …/instances: p50 {}, max {} (all {} sent at once)",
            ms(b.create_p50),
            ms(b.create_max),
            b.vms
        );
        println!(
            "  running: {ran}/{}; first {}, median {}, all {}",
            b.vms,
            opt_secs(runs.first().copied()),
            secs(percentile(&runs, 0.5)),
            opt_secs(b.all_running)
        );
        println!(
            "  ready:   {rdy}/{} within {} s; first {}, median {}, last {}",
            b.vms,
            a.ready_timeout,
            opt_secs(rdys.first().copied()),
            secs(percentile(&rdys, 0.5)),
            opt_secs(rdys.last().copied())
        );
        for f in &b.failed {
            println!("  failed: {f}");
        }
        println!("  deleting all, until gone: {}", secs(b.delete));

        let until_running = b.all_running.unwrap_or(b.end);
        let phases: [(&str, Duration, Duration, Option<bool>); 5] = [
            (
                "creating → all running",
                Duration::ZERO,
                until_running,
                None,
            ),
            ("all running → all ready", until_running, b.end, None),
            (
                "whole burst, GET instance",
                Duration::ZERO,
                b.end,
                Some(false),
            ),
            ("whole burst, list", Duration::ZERO, b.end, Some(true)),
            ("whole burst", Duration::ZERO, b.end, None),
        ];
        println!();
        println!(
            "API latency during the burst (load loop; authenticated, authorized, audited GETs):"
        );
        println!(
            "{:<34} {:>9} {:>7} {:>8} {:>10} {:>10} {:>10}",
            "window", "requests", "errors", "req/s", "p50", "p99", "max"
        );
        let print_w = |label: &str, w: &Window| {
            println!(
                "{:<34} {:>9} {:>7} {:>8.0} {:>10} {:>10} {:>10}",
                label,
                w.requests,
                w.errors,
                w.rps,
                ms(w.p50),
                ms(w.p99),
                ms(w.max)
            );
        };
        for (label, from, to, list) in phases {
            print_w(label, &window(&b.samples, from, to, list));
        }
        print_w(
            &format!("after: {} VMs idle, {} s", b.qemu_n, a.idle_seconds),
            &window(&b.samples, b.idle_from, b.idle_to, None),
        );
        let whole = window(&b.samples, Duration::ZERO, b.end, None);

        // The allocator returns memory at its own pace, so RSS with the
        // VMs can even be below the figure before; the peak bounds it.
        let vms = b.vms.max(1) as f64;
        let per_vm = (b.rss_with - b.rss_before) / vms;
        let per_vm_peak = (b.hwm.max(b.rss_with) - b.rss_before) / vms;
        println!();
        println!(
            "memory (bench and server share the process): RSS {:.1} MiB before the burst, {:.1} MiB with {} VMs running, peak {:.1} MiB during the burst, {:.1} MiB once they are deleted",
            b.rss_before, b.rss_with, b.qemu_n, b.hwm, b.rss_after
        );
        println!(
            "  per VM: {per_vm:+.2} MiB (with − before), at most {per_vm_peak:+.2} MiB (peak − before)"
        );
        println!(
            "  QEMU processes (separate, not counted above): {} with {:.0} MiB RSS in all, {:.1} MiB each",
            b.qemu_n,
            b.qemu_rss,
            b.qemu_rss / b.qemu_n.max(1) as f64
        );

        goals.push(format!(
            "goal {} VMs at once all running: {ran}/{} ({} ready): {}",
            b.vms,
            b.vms,
            rdy,
            met(ran == b.vms && b.failed.is_empty())
        ));
        goals.push(format!(
            "goal API p99 < 50 ms during the burst: {}: {}",
            ms(whole.p99),
            met(whole.p99 < Duration::from_millis(50) && whole.errors == 0)
        ));
        goals.push(format!(
            "goal agent memory overhead < 5 MiB per VM (server RSS, peak − before): {per_vm_peak:.2} MiB: {}",
            met(per_vm_peak < 5.0)
        ));
    }

    println!();
    for g in &goals {
        println!("{g}");
    }
    let left = nuage_qemu_left(data_dir);
    if left > 0 {
        return Err(format!(
            "{left} run director(ies) left under compute/vm after the deletes"
        ));
    }
    Ok(())
}

/// Run directories left under the data dir's `compute/vm`.
fn nuage_qemu_left(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("compute/vm"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}
